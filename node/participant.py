"""A node's side of secure aggregation: the sessions it takes part in (secagg.protocol.Participant), each input
added to one sum only (node.inputs), each phase answered once (a retry gets the same answer)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property

from node.config import NodeConfig
from node.inputs import SecureInputs
from node.messages import SecureBegin, SecureConsistency, SecureMask, SecureShare, SecureUnmask
from node.policy import NodeRefusal, UnknownRun

MAX_SESSIONS = 64


@dataclass(frozen=True)
class SecureInput:
    """What this node adds to one sum: `values` (name -> array) encoded as `vectors` says (bits, scale), `raw` the
    exact input whose digest identifies it, `meta` its public part, `bound` what the sum's context binds (run,
    round, weights), `description` the input in words (for a refusal)."""

    values: dict
    vectors: dict
    raw: dict
    meta: dict
    bound: dict
    description: str


@dataclass
class _Session:
    participant: object  # secagg.protocol.Participant
    answers: dict  # phase -> its answer
    begun: tuple  # (what it adds, participants, threshold): a retry must ask the same
    digest: str  # node.secure.input_digest of this node's input
    description: str


class SecureParticipation:
    """The secure sums of one node: the latest MAX_SESSIONS sessions, and the durable record of its inputs."""

    def __init__(self, config: NodeConfig):
        self.name, self.config = config.institution, config
        self.rules = config.secure_rules()
        self.inputs = SecureInputs(config.work_dir / "secure_inputs.jsonl")
        self.sessions: OrderedDict[str, _Session] = OrderedDict()

    def require_rules(self):
        """The consortium's secure-aggregation rules; refused when the node's config lists no members."""
        if self.rules is None:
            raise NodeRefusal(
                f"institution '{self.name}' takes part in no secure sum: its config lists no "
                f"consortium members (consortium.members)"
            )
        return self.rules

    def retried(self, request: SecureBegin) -> dict | None:
        """The answer to a begin asked again (the same session, participants, threshold and input), else None once
        the session is checked against the consortium's rules."""
        from secagg.protocol import RULE_ONE_SUM, SecureAggregationError

        participants = tuple(sorted(request.participants))
        known = self.sessions.get(request.session)
        if known is not None:
            if known.begun != (request.added, participants, request.threshold):
                raise NodeRefusal(
                    f"institution '{self.name}': secure sum {request.session} began with other participants, "
                    f"threshold or operation; a retry continues the same session (rule: {RULE_ONE_SUM})"
                )
            return known.answers["begin"]
        try:
            self.require_rules().check_session(self.name, participants, request.threshold)
        except SecureAggregationError as error:
            raise NodeRefusal(f"institution '{self.name}' refuses secure sum {request.session}: {error}") from None
        return None

    def begin(self, request: SecureBegin, added: SecureInput) -> dict:
        """Keep this node's input for the session; answer with fresh public keys signed with its TLS key and the
        vectors' sizes. Refused for an input already added to another sum."""
        from node import secure
        from secagg import ring
        from secagg.protocol import Participant, context_digest
        from secagg.ring import VectorSpec

        participants = tuple(sorted(request.participants))
        digest = secure.input_digest(secure.SAME_INPUT.get(request.added, request.added), added.raw)
        earlier = self.inputs.earlier(digest, request.session)
        if earlier is not None:
            raise self._second_sum(earlier)
        specs = {name: VectorSpec(len(v), **added.vectors[name]) for name, v in added.values.items()}
        context = context_digest(
            {
                "session": request.session,
                "operation": request.added,
                "participants": list(participants),
                "threshold": request.threshold,
                **added.bound,
                "vectors": {name: [spec.size, spec.bits, spec.scale] for name, spec in specs.items()},
            }
        )
        participant = Participant(
            self._identity,
            request.session,
            participants,
            request.threshold,
            self.require_rules(),
            context,
            {name: ring.encode(v, specs[name]) for name, v in added.values.items()},
            specs,
        )
        answer = {
            "keys": participant.advertise().as_dict(),
            "meta": added.meta,
            "sizes": {name: spec.size for name, spec in specs.items()},
        }
        self.sessions[request.session] = _Session(
            participant, {"begin": answer}, (request.added, participants, request.threshold), digest, added.description
        )
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return answer

    def share(self, request: SecureShare) -> dict:
        """Check every relayed key against the consortium CA, then send encrypted shares of this node's secrets."""
        from secagg.protocol import Advertisement

        roster = {name: Advertisement.from_dict(a) for name, a in request.roster.items()}
        return self._phase(
            request.session, "share", lambda p: {"shares": {to: box.hex() for to, box in p.share(roster).items()}}
        )

    def mask(self, request: SecureMask) -> dict:
        """This node's input, masked (the only form in which it leaves), recorded first as added to this sum."""
        from secagg import ring

        inbox = {sender: bytes.fromhex(box) for sender, box in request.inbox.items()}
        session = self._session(request.session)

        def mask(p):
            masked = p.masked(inbox)
            earlier = self.inputs.record(
                session.digest, p.session, session.begun[0], session.description, p.participants
            )
            if earlier is not None:  # another session of the same input masked first: this one ends here
                self.sessions.pop(p.session, None)
                raise self._second_sum(earlier)
            return {"masked": {name: ring.to_bytes(value, p.specs[name]) for name, value in masked.items()}}

        return self._phase(request.session, "mask", mask)

    def consistency(self, request: SecureConsistency) -> dict:
        """This node's signature on the coordinator's list of senders, if the list agrees with what it saw."""
        sent = sorted(request.sent)
        return self._phase(
            request.session, "consistency " + ",".join(sent), lambda p: {"signature": p.consistency(sent).hex()}
        )

    def unmask(self, request: SecureUnmask) -> dict:
        """Its shares for the list of senders it signed, once shown the threshold's signatures on that list."""
        sent = sorted(request.sent)
        signatures = {name: bytes.fromhex(signature) for name, signature in request.signatures.items()}
        return self._phase(request.session, "unmask " + ",".join(sent), lambda p: p.unmask(sent, signatures))

    def _second_sum(self, earlier) -> NodeRefusal:
        from secagg.protocol import RULE_ONE_SUM

        return NodeRefusal(
            f"institution '{self.name}' already added {earlier.description} to secure sum {earlier.session} "
            f"({earlier.at}, participants {list(earlier.participants)}); a second sum over the same input would let "
            f"the coordinator subtract the sums and read it (rule: {RULE_ONE_SUM})"
        )

    @cached_property
    def _identity(self):
        """This institution's TLS identity, which signs its keys in every secure sum (read once)."""
        from secagg.protocol import Identity

        ca, cert, key = self.config.tls.read()
        return Identity(self.name, cert, key, ca)

    def _session(self, session: str) -> _Session:
        if session not in self.sessions:
            raise UnknownRun(f"institution '{self.name}' has no secure sum {session} (it restarted?)")
        return self.sessions[session]

    def _phase(self, session: str, phase: str, compute) -> dict:
        from secagg.protocol import SecureAggregationError

        state = self._session(session)
        if phase not in state.answers:
            try:
                state.answers[phase] = compute(state.participant)
            except SecureAggregationError as error:
                raise NodeRefusal(f"institution '{self.name}': {error}") from None
        return state.answers[phase]
