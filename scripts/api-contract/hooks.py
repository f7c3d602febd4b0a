"""Schemathesis hooks for Palisade's admin API: values for the formats the document names
that JSON Schema has no word for, and the few rules between fields that no schema states.

Formats (see raft/src/model/schema.rs): host, ip, cidr, cidr-list, host-port, path-pattern,
pem-chain, pem-key; and the text of IP-list imports. Each strategy draws only values the API
accepts, so a refusal of one is a finding.

Rules between fields, stated in the document's descriptions and kept out of the positive cases
by filters (a filter only drops a generated case, it never changes one):
  - `expires_at` is in the future, and not given together with `ttl_seconds`;
  - the audit log's `until` is after its `since`;
  - a bot policy's `no_script_wait_seconds` is at most half its `answer_within_seconds`;
  - a header policy with `hsts_preload` has `hsts_max_age` of a year or more and
    `hsts_include_subdomains`;
  - removing an IP-list entry names `cidr` or `all=true`, not both.
"""

import os
import time

import schemathesis
from hypothesis import strategies as st

_label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\Z")
_tld = st.from_regex(r"\A[a-z]{2,6}\Z")
_name = st.builds(lambda labels, tld: ".".join(labels + [tld]),
                  st.lists(_label, min_size=1, max_size=3), _tld)
schemathesis.openapi.format("host", st.one_of(_name, _name.map(lambda h: "*." + h)))

_v4 = st.ip_addresses(v=4).map(str)
_v6 = st.ip_addresses(v=6).map(str)
_ip = st.one_of(_v4, _v6)
schemathesis.openapi.format("ip", _ip)
_cidr = st.one_of(
    _ip,
    st.builds(lambda a, p: f"{a}/{p}", _v4, st.integers(0, 32)),
    st.builds(lambda a, p: f"{a}/{p}", _v6, st.integers(0, 128)),
)
schemathesis.openapi.format("cidr", _cidr)
schemathesis.openapi.format("cidr-list", st.lists(_cidr, max_size=4).map(",".join))

# Upstreams: names, or addresses in the documentation ranges (never the node's private side,
# which the API refuses by design).
_public = st.builds(lambda net, n: f"{net}.{n}", st.sampled_from(["192.0.2", "198.51.100", "203.0.113"]),
                    st.integers(1, 254))
schemathesis.openapi.format(
    "host-port",
    st.builds(lambda h, p: f"{h}:{p}", st.one_of(_name, _public), st.integers(1, 65535)),
)

_segment = st.from_regex(r"\A[a-z0-9_~-]{1,10}\Z")


def _path(segs, tail):
    path = "/" + "/".join(segs)
    return path + (tail if segs else tail.lstrip("/"))


schemathesis.openapi.format(
    "path-pattern",
    st.builds(_path, st.lists(_segment, max_size=4), st.sampled_from(["", "/", "*", "/*"])),
)

# IP-list imports: one address or CIDR per line (the CSV form takes the same lines).
_import = st.lists(_cidr, min_size=1, max_size=20).map(lambda xs: "\n".join(xs) + "\n")
schemathesis.openapi.media_type("text/plain", _import)
schemathesis.openapi.media_type("text/csv", _import)

_pem = os.environ.get("API_CONTRACT_PEM_DIR", "")
if _pem:
    with open(os.path.join(_pem, "chain.pem")) as f:
        schemathesis.openapi.format("pem-chain", st.just(f.read()))
    with open(os.path.join(_pem, "key.pem")) as f:
        schemathesis.openapi.format("pem-key", st.just(f.read()))


def _now_ms():
    return int(time.time() * 1000)


def _bot_ok(bot):
    if not isinstance(bot, dict):
        return True
    wait = bot.get("no_script_wait_seconds", 8)
    within = bot.get("answer_within_seconds", 300)
    if not isinstance(wait, int) or not isinstance(within, int):
        return True
    return wait <= min(within // 2, 120)


def _headers_ok(h):
    if not isinstance(h, dict) or h.get("hsts_preload") is not True:
        return True
    age = h.get("hsts_max_age", 31_536_000)
    return isinstance(age, int) and age >= 31_536_000 and h.get("hsts_include_subdomains", True) is True


def _body_ok(path, body):
    if not isinstance(body, dict):
        return True
    at, ttl = body.get("expires_at"), body.get("ttl_seconds")
    if at is not None and ttl is not None:
        return False
    if isinstance(at, int) and at <= _now_ms() + 600_000:
        return False
    if path.endswith("/bot"):
        return _bot_ok(body)
    if path.startswith("/v1/projects"):
        return _bot_ok(body.get("bot")) and _headers_ok(body.get("headers"))
    return True


def _int(v):
    """A query value as the server reads it (the coverage phase sends text)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return None


def _query_ok(method, path, query):
    if not isinstance(query, dict):
        return True
    since, until = _int(query.get("since")), _int(query.get("until"))
    if since is not None and until is not None and until <= since:
        return False
    if method == "DELETE" and path.endswith("/ip-rules"):
        all_ = query.get("all") in (True, "true")
        return (query.get("cidr") is None) == all_
    return True


@schemathesis.hook
def filter_case(ctx, case):
    # Every phase (the coverage phase applies case hooks only).
    op = case.operation
    return _body_ok(op.path, case.body) and _query_ok(op.method.upper(), op.path, case.query)
