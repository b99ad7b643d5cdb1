// Parse Adaptive Cards with Microsoft's `adaptivecards` library (the renderer of Teams-like web clients),
// targeting schema 1.5. Input on stdin: a JSON array of {"name": string, "card": object}. Output on stdout:
// a JSON array of {"name", "events": [{"event", "message", "type"}], "json"}, where `events` are the parse and
// validation events the library reports (unknown elements/actions, bad values, unsupported versions...) and
// `json` is the card as the library understood it (an unknown element replaced by its fallback).
"use strict";

const path = require("path");
// The package's `main` is an ES module build that node cannot load by itself; its UMD bundle is the same code.
const AC = require(path.join(__dirname, "node_modules", "adaptivecards", "dist", "adaptivecards.js"));

function typeOf(source) {
  return source && typeof source.getJsonTypeName === "function" ? source.getJsonTypeName() : null;
}

function check(card) {
  const context = new AC.SerializationContext(AC.Versions.v1_5);
  const adaptiveCard = new AC.AdaptiveCard();
  adaptiveCard.parse(card, context);
  const events = [];
  for (let i = 0; i < context.eventCount; i++) {
    const e = context.getEventAt(i);
    events.push({ event: AC.ValidationEvent[e.event], message: e.message, type: typeOf(e.source) });
  }
  for (const e of adaptiveCard.validateProperties().validationEvents) {
    events.push({ event: AC.ValidationEvent[e.event], message: e.message, type: typeOf(e.source) });
  }
  return { events, json: adaptiveCard.toJSON() };
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const cards = JSON.parse(input);
  const results = cards.map(({ name, card }) => {
    try {
      return { name, ...check(card) };
    } catch (error) {
      return { name, events: [{ event: "Exception", message: String(error), type: null }], json: null };
    }
  });
  process.stdout.write(JSON.stringify(results));
});
