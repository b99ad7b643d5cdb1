"""Where the dialogs' stack lives between turns: the SDK's PrivateConversationState (per person, per
conversation), with a cheaper "did it change?" check.

The SDK decides whether to write the state back by comparing a fingerprint taken when it was loaded with one
taken at the end of the turn; its fingerprint is a full jsonpickle flattening, twice a turn. Ours is the
digest of the state's pickle (C speed), falling back to the SDK's for anything pickle refuses. Equal pickles mean equal
state; a spurious difference (e.g. objects shared differently) only costs a write, never a lost one.
"""

from __future__ import annotations

import hashlib
import pickle

from botbuilder.core import PrivateConversationState, TurnContext
from botbuilder.core.bot_state import CachedBotState


class _Fingerprinted(CachedBotState):
    def compute_hash(self, obj: object) -> str:
        try:
            return hashlib.blake2b(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), digest_size=16).hexdigest()
        except Exception:  # not picklable: the SDK's own fingerprint
            return str(super().compute_hash(obj))


class DialogStackState(PrivateConversationState):
    """PrivateConversationState whose loaded state carries the pickle fingerprint (see the module docstring)."""

    async def load(self, turn_context: TurnContext, force: bool = False) -> None:
        cached = self.get_cached_state(turn_context)
        if force or not cached or not cached.state:
            key = self.get_storage_key(turn_context)
            items = await self._storage.read([key])
            turn_context.turn_state[self._context_service_key] = _Fingerprinted(items.get(key))
