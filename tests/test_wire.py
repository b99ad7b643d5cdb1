"""bot/teams/wire.py builds and reads Bot Framework JSON exactly as msrest does, for every activity shape.

msrest is the reference: each case is run through both, and the models (msrest compares every attribute,
`additional_properties` included) or the JSON must be equal -- or both must refuse the input.
"""

from __future__ import annotations

import datetime
import inspect
from typing import Any

import botbuilder.schema as schema
import botbuilder.schema.teams as teams_schema
import pytest
from botbuilder.core import CardFactory, MessageFactory, TurnContext
from botbuilder.schema import Activity, CardAction, ChannelAccount, ConversationReference, HeroCard, SuggestedActions
from botbuilder.schema.teams import TeamsChannelAccount, TeamsChannelData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msrest.serialization import Model, Serializer

from bot.teams.wire import _is_plain, from_json, request_body, to_json

MODELS = [c for module in (schema, teams_schema) for c in vars(module).values()
          if inspect.isclass(c) and issubclass(c, Model)]


def msrest_load(cls: type[Model], data: Any) -> Any:
    try:
        return cls.deserialize(data)
    except Exception as exc:  # compared by "both refused", not by message
        return ("refused", type(exc).__name__)


def fast_load(cls: type[Model], data: Any) -> Any:
    try:
        return from_json(cls, data)
    except Exception as exc:
        return ("refused", type(exc).__name__)


def msrest_body(model: Model) -> dict[str, Any]:
    body: dict[str, Any] = Serializer(dict(type(model)._infer_class_models())).body(model, type(model).__name__)
    return body


def test_every_schema_model_is_one_the_fast_path_reproduces() -> None:
    """The fast path relies on the schema having no flattened keys, validation or polymorphism."""
    assert len(MODELS) > 100
    assert [c.__name__ for c in MODELS if not _is_plain(c)] == []


TEAMS_MESSAGE = {
    "type": "message", "id": "1700000000001", "timestamp": "2026-03-01T10:15:30.1234567Z",
    "localTimestamp": "2026-03-01T11:15:30.123+01:00", "localTimezone": "Europe/Berlin",
    "serviceUrl": "https://smba.trafficmanager.net/emea/", "channelId": "msteams",
    "from": {"id": "29:1abc", "name": "Ada Lovelace", "aadObjectId": "aad-1"},
    "conversation": {"conversationType": "channel", "tenantId": "t1", "isGroup": True,
                     "id": "19:abc@thread.tacv2;messageid=1699999999999"},
    "recipient": {"id": "28:bot", "name": "Price Watch"},
    "textFormat": "plain", "locale": "en-US", "text": "<at>Price Watch</at> watch gadget below 20",
    "attachments": [{"contentType": "text/html", "content": "<div>watch</div>"}],
    "entities": [{"type": "mention", "text": "<at>Price Watch</at>", "mentioned": {"id": "28:bot", "name": "Bot"}},
                 {"type": "clientInfo", "locale": "en-US", "country": "US", "platform": "Web", "timezone": "x"}],
    "channelData": {"teamsChannelId": "19:abc@thread.tacv2", "teamsTeamId": "19:team@thread.tacv2",
                    "channel": {"id": "19:abc@thread.tacv2", "name": "General"},
                    "team": {"id": "19:team@thread.tacv2", "name": "Ops"}, "tenant": {"id": "t1"}},
}
MEMBERS_ADDED = {
    "type": "conversationUpdate", "id": "f:1", "channelId": "msteams", "serviceUrl": "https://x/",
    "membersAdded": [{"id": "28:bot"}, {"id": "29:new", "aadObjectId": "aad-2", "userPrincipalName": "a@b.c",
                                         "email": "a@b.c", "givenName": "Ada", "tenantId": "t1"}],
    "conversation": {"id": "19:team@thread.tacv2", "conversationType": "channel", "tenantId": "t1"},
    "from": {"id": "29:installer", "aadObjectId": "aad-9"}, "recipient": {"id": "28:bot", "name": "Bot"},
    "channelData": {"team": {"id": "19:team@thread.tacv2", "name": "Ops"}, "eventType": "teamMemberAdded",
                    "tenant": {"id": "t1"}, "settings": {"selectedChannel": {"id": "19:abc@thread.tacv2"}}},
}
CARD_ACTION = {
    "type": "invoke", "name": "adaptiveCard/action", "id": "i:1", "channelId": "msteams", "serviceUrl": "https://x/",
    "from": {"id": "29:u", "name": "U"}, "conversation": {"id": "a:1", "conversationType": "personal"},
    "recipient": {"id": "28:bot"}, "replyToId": "1700000000009",
    "value": {"action": {"type": "Action.Execute", "verb": "alert", "data": {"command": "alert", "n": 1.5,
                                                                           "flag": True, "none": None}},
              "trigger": "manual"},
}
ODD = {  # shapes msrest coerces or keeps aside
    "type": "message", "id": 42, "historyDisclosed": "true", "listenFor": ["a", 1], "unknownTop": {"x": 1},
    "conversation": {"id": "c", "isGroup": 0, "extra": [1, 2]}, "from": {"id": "u", "role": "user", "x": None},
    "membersAdded": [None, {"id": "m"}], "channelData": ["a", {"b": None}], "value": "plain string",
}
REFUSED = [
    {"type": "message", "from": "not an object"},
    {"type": "message", "membersAdded": {"id": "not a list"}},
    {"type": "message", "historyDisclosed": "maybe"},
    {"type": "message", "timestamp": "yesterday"},
    {"type": "message", "attachments": ["not an object"]},
]


@pytest.mark.parametrize("data", [TEAMS_MESSAGE, MEMBERS_ADDED, CARD_ACTION, ODD, *REFUSED],
                         ids=["teams message", "members added", "card action", "odd shapes",
                              *[f"refused {i}" for i in range(len(REFUSED))]])
def test_inbound_activities_are_read_as_msrest_reads_them(data: dict[str, Any]) -> None:
    assert fast_load(Activity, data) == msrest_load(Activity, data)
    loaded = fast_load(Activity, data)
    if isinstance(loaded, Activity):
        assert to_json(loaded) == loaded.serialize()
        assert request_body(loaded) == msrest_body(loaded)


def test_teams_members_keep_their_extra_fields_where_the_sdk_looks_for_them() -> None:
    activity = from_json(Activity, MEMBERS_ADDED)
    bot, person = activity.members_added
    assert bot.additional_properties == {}
    assert person.additional_properties == {"userPrincipalName": "a@b.c", "email": "a@b.c", "givenName": "Ada",
                                            "tenantId": "t1"}
    assert from_json(TeamsChannelData, MEMBERS_ADDED["channelData"]) == TeamsChannelData().deserialize(
        MEMBERS_ADDED["channelData"])


def reply_to(inbound: dict[str, Any], outgoing: Activity) -> Activity:
    """What TurnContext.send_activity hands the adapter."""
    return TurnContext.apply_conversation_reference(
        outgoing, TurnContext.get_conversation_reference(from_json(Activity, inbound)))


OUTGOING = {
    "text": MessageFactory.text("Done: I'll tell you when **gadget** drops below 20.", input_hint="acceptingInput"),
    "card": MessageFactory.attachment(CardFactory.adaptive_card({
        "type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Help", "wrap": True}],
        "actions": [{"type": "Action.Execute", "title": "Mute", "verb": "alert", "data": {"n": 2, "f": 0.5}}]}),
        "fallback text"),
    "hero card": MessageFactory.attachment(CardFactory.hero_card(HeroCard(
        title="Gadget", buttons=[CardAction(type="imBack", title="list", value="list")]))),
    "suggested actions": Activity(type="message", text="pick", suggested_actions=SuggestedActions(
        actions=[CardAction(type="imBack", title="a", value="a")], to=["29:u"])),
    "typing": Activity(type="typing"),
    "trace with a date": Activity(type="trace", name="t", value={"at": "x"}, label="l",
                                  timestamp=datetime.datetime(2026, 1, 2, 3, 4, 5, 600000,
                                                              tzinfo=datetime.UTC)),
    "mention": Activity(type="message", text="<at>Ada</at> hi", entities=[schema.Mention(
        mentioned=ChannelAccount(id="29:u", name="Ada"), text="<at>Ada</at>", type="mention")]),
    "teams account": Activity(type="message", from_property=TeamsChannelAccount(id="29:x", email="e@x"),
                              channel_data={"notification": {"alert": True}, "nested": HeroCard(title="in object")}),
}


@pytest.mark.parametrize("name", list(OUTGOING))
def test_replies_are_written_as_msrest_writes_them(name: str) -> None:
    activity = reply_to(TEAMS_MESSAGE, OUTGOING[name])
    assert to_json(activity) == activity.serialize()
    assert request_body(activity) == msrest_body(activity)


def test_a_dict_where_a_model_belongs_is_rebuilt_by_msrest_as_the_sdk_would() -> None:
    activity = Activity(type="message", text="x", from_property={"id": "28:bot", "name": "Bot"})  # type: ignore[arg-type]
    assert request_body(activity)["from"] == {"id": "28:bot", "name": "Bot"}


def test_references_round_trip_as_with_msrest() -> None:
    reference = TurnContext.get_conversation_reference(from_json(Activity, TEAMS_MESSAGE))
    assert to_json(reference) == reference.serialize()
    assert from_json(ConversationReference, to_json(reference)) == ConversationReference().deserialize(
        reference.serialize())


# ---- generated shapes ----------------------------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
account = st.fixed_dictionaries({"id": st.text(max_size=6)}, optional={
    "name": st.text(max_size=6), "aadObjectId": st.text(max_size=4), "role": st.sampled_from(["user", "bot"]),
    "extra": json_value})
conversation = st.fixed_dictionaries({"id": st.text(max_size=8)}, optional={
    "conversationType": st.sampled_from(["personal", "groupChat", "channel"]), "tenantId": st.text(max_size=4),
    "isGroup": st.booleans() | st.sampled_from(["true", "false", 1, 0]), "tenantID": st.text(max_size=4)})
when = st.datetimes(min_value=datetime.datetime(1990, 1, 1), max_value=datetime.datetime(2090, 1, 1),
                    timezones=st.just(datetime.UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z"))
activity_json = st.fixed_dictionaries({"type": st.sampled_from(["message", "conversationUpdate", "invoke", "typing"])},
                                      optional={
    "id": st.text(max_size=6) | st.integers(0, 99), "text": st.text(max_size=12), "timestamp": when,
    "localTimestamp": when, "from": account, "recipient": account, "conversation": conversation,
    "membersAdded": st.lists(account | st.none(), max_size=3), "channelData": json_value, "value": json_value,
    "entities": st.lists(st.dictionaries(st.sampled_from(["type", "text", "x"]), json_value, max_size=3), max_size=2),
    "attachments": st.lists(st.fixed_dictionaries({"contentType": st.text(max_size=5)}, optional={
        "content": json_value, "name": st.text(max_size=3)}), max_size=2),
    "historyDisclosed": st.booleans(), "listenFor": st.lists(st.text(max_size=3), max_size=2),
    "somethingNew": json_value, "replyToId": st.text(max_size=5), "locale": st.text(max_size=5),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(activity_json)
def test_generated_activities_read_and_write_as_with_msrest(data: dict[str, Any]) -> None:
    loaded = fast_load(Activity, data)
    assert loaded == msrest_load(Activity, data)
    if isinstance(loaded, Activity):
        assert to_json(loaded) == loaded.serialize()
        reply = reply_to(data, Activity(type="message", text="echo", channel_data=data.get("channelData")))
        assert to_json(reply) == reply.serialize()
