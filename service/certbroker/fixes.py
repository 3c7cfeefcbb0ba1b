"""What a person must do after a CA refusal, in words ready to act on (``action_required``).

Pure functions of what the broker observed (the CAA record to add comes with the
CAA check itself: ``dns.caa_fix``). A dashboard shows these as they
are, so each says the exact record or the exact thing to change, never only
the CA's wording (which is quoted for reference).
"""

from __future__ import annotations

from typing import Final

#: Terminal CA refusals whose fix is the customer's, with what to do. ``{name}``
#: is the domain, ``{ca}`` the CA identity CAA must name, ``{detail}`` the CA's words.
_CA_FIXES: Final[dict[str, str]] = {
    "ACME_CAA": (
        "The CA refused: a CAA record forbids it ({detail}). Allow it where the CAA set "
        'of {name} is decided, e.g. {base}. CAA 0 issue "{ca}", or remove the record. '
        "The CA's resolver may see records this broker does not (DNSSEC, split DNS)."
    ),
    "ACME_REJECTED_IDENTIFIER": (
        "The CA will not issue for {name} ({detail}). Remove the domain or upload a "
        "custom certificate for it."
    ),
    "ACME_UNAUTHORIZED": (
        "The CA reached a server that did not answer the challenge for {name} twice while "
        "DNS points at the platform ({detail}). Make sure http://{name}/.well-known/"
        "acme-challenge/ reaches the platform: no other AAAA record, no proxy, CDN or "
        "redirect answering that path."
    ),
    "ACME_INCORRECT_RESPONSE": (
        "The CA got a wrong answer to the challenge for {name} twice while DNS points at "
        "the platform ({detail}). Make sure http://{name}/.well-known/acme-challenge/ "
        "reaches the platform and nothing rewrites the response."
    ),
}
_DNS01_FIXES: Final[dict[str, str]] = {
    "ACME_UNAUTHORIZED": (
        "The CA did not find the challenge value for {name} twice although the delegation "
        "is in place ({detail}). Check that _acme-challenge is only the CNAME the broker "
        "asked for (no TXT records beside it) and that the zone is signed correctly."
    ),
    "ACME_INCORRECT_RESPONSE": (
        "The CA found a wrong challenge value for {name} twice ({detail}). Remove any "
        "other TXT record at _acme-challenge; keep only the CNAME the broker asked for."
    ),
}
_DEFAULT_FIX: Final = (
    "The CA refused the certificate for {name} and will refuse again until something "
    "changes: {reason} ({detail}). Fix the cause (for the broker's own account or "
    "settings, tell the platform operator); the broker re-checks every minute."
)


def ca_refusal(
    name: str, reason: str, detail: str, ca_identity: str, *, dns01: bool, base: str
) -> str:
    """The fix for a terminal CA refusal of ``name`` (reason from ``acme.problems``)."""
    table = _DNS01_FIXES if dns01 and reason in _DNS01_FIXES else _CA_FIXES
    template = table.get(reason, _DEFAULT_FIX)
    return template.format(
        name=name, reason=reason, detail=detail or "no detail", ca=ca_identity, base=base
    )
