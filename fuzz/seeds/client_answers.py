#!/usr/bin/env python3
"""Writes the seed corpora of the client fuzz targets: server answers as the client receives
them, in each target's input format (see the target's doc comment).

  python3 fuzz/seeds/client_answers.py

The keys/query seed carries real Ed25519 signatures (fixed keys), so the fuzzer starts from
answers that pass the signature checks.
"""
import base64
import json
import pathlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HERE = pathlib.Path(__file__).resolve().parent
DATE = "Thu, 03 Dec 2026 13:23:00 GMT"
EXPIRES = "Thu, 03 Dec 2026 13:25:00 GMT"
# Index of each status in the targets' STATUSES tables.
RV = {s: i for i, s in enumerate([200, 201, 202, 304, 400, 401, 403, 404, 405, 409, 412, 500, 503])}
OA = {s: i for i, s in enumerate([200, 201, 400, 401, 403, 429, 500, 503])}


def write(target, name, data):
    (HERE / target).mkdir(exist_ok=True)
    (HERE / target / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def j(value):
    return json.dumps(value, separators=(",", ":"))


def rendezvous():
    t = "client_rendezvous_answers"
    payload = base64.b64encode(b"\x01" * 200).decode()
    write(t, "msc4388_read", bytes([0, RV[200]]) + j({"data": payload, "sequence_token": "c2Vx", "expires_in_ms": 120000}).encode())
    write(t, "msc4388_read_gone", bytes([0, RV[404]]) + j({"errcode": "M_NOT_FOUND", "error": "gone"}).encode())
    write(t, "msc4388_write", bytes([1, RV[200]]) + j({"sequence_token": "2", "expires_in_ms": 119000}).encode())
    write(t, "msc4388_conflict", bytes([1, RV[409]]) + j({"errcode": "M_CONCURRENT_WRITE", "error": "sequence_token mismatch"}).encode())
    write(t, "msc4388_create", bytes([2, RV[201]]) + j({"id": "abcdEFGH", "sequence_token": "1", "expires_in_ms": 18446744073709551615}).encode())
    head = f"ETag: \"2\"\nExpires: {EXPIRES}\nDate: {DATE}\nContent-Type: text/plain\n\n"
    write(t, "msc4108_read", bytes([3, RV[200]]) + (head + payload).encode())
    write(t, "msc4108_not_modified", bytes([3, RV[304]]) + head.encode())
    far = "ETag: \"9\"\nExpires: Fri, 31 Dec 9999 23:59:59 GMT\nDate: Thu, 01 Jan 1970 00:00:00 GMT\n\n"
    write(t, "msc4108_far_expiry", bytes([3, RV[200]]) + far.encode())
    write(t, "msc4108_write", bytes([4, RV[202]]) + head.encode())
    write(t, "msc4108_precondition", bytes([4, RV[412]]) + b"\n\n")
    url = "https://matrix.example.org/_matrix/client/unstable/org.matrix.msc4108/rendezvous/abc"
    write(t, "msc4108_create", bytes([5, RV[201]]) + (head + j({"url": url})).encode())


def metadata():
    t = "client_oauth_metadata"
    base = "https://auth.example.org/"
    m = {
        "issuer": base,
        "authorization_endpoint": base + "authorize",
        "token_endpoint": base + "oauth2/token",
        "registration_endpoint": base + "oauth2/registration",
        "revocation_endpoint": base + "oauth2/revoke",
        "device_authorization_endpoint": base + "oauth2/device",
        "account_management_uri": base + "account/",
        "account_management_actions_supported": ["org.matrix.profile", "org.matrix.session_end"],
        "grant_types_supported": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["create"],
    }
    write(t, "https", j(m))
    loopback = {k: (v.replace(base, "http://127.0.0.1:8008/") if isinstance(v, str) else v) for k, v in m.items()}
    write(t, "loopback", j(loopback))
    plain = dict(m, device_authorization_endpoint="http://auth.example.org/oauth2/device")
    write(t, "plain_http_endpoint", j(plain))
    minimal = {k: m[k] for k in ("issuer", "authorization_endpoint", "token_endpoint")}
    write(t, "minimal", j(minimal))


def grants():
    t = "client_oauth_grants"
    grant = {
        "device_code": "GmRhmhcxhwAzkoEqiMEg_DnyEysNkuNhszIySk9eS",
        "user_code": "WDJB-MJHT",
        "verification_uri": "https://auth.example.org/link",
        "verification_uri_complete": "https://auth.example.org/link?code=WDJB-MJHT",
        "expires_in": 1800,
        "interval": 5,
    }
    write(t, "device_authorization", bytes([0, OA[200]]) + j(grant).encode())
    huge = dict(grant, expires_in=18446744073709551615, interval=18446744073709551615)
    write(t, "device_authorization_huge", bytes([0, OA[200]]) + j(huge).encode())
    tokens = {"access_token": "mat_abc", "refresh_token": "mar_def", "expires_in": 300, "scope": "urn:matrix:client:api:*", "token_type": "Bearer"}
    write(t, "tokens", bytes([1, OA[200]]) + j(tokens).encode())
    write(t, "poll_granted", bytes([2, OA[200]]) + j(tokens).encode())
    for status, error in [(400, "authorization_pending"), (403, "slow_down"), (400, "expired_token"), (403, "access_denied"), (401, "invalid_client")]:
        write(t, f"poll_{error}", bytes([2, OA[status]]) + j({"error": error, "error_description": "…"}).encode())
    write(t, "oauth_error", bytes([3, OA[400]]) + j({"error": "invalid_grant", "error_description": "bad code"}).encode())
    write(t, "matrix_error", bytes([4, OA[403]]) + j({"errcode": "M_FORBIDDEN", "error": "no"}).encode())


def discovery():
    t = "client_discovery_answers"
    write(t, "well_known", b"\x00" + j({"m.homeserver": {"base_url": "https://matrix.example.org"}, "org.matrix.msc2965.authentication": {"issuer": "https://auth.example.org/"}}).encode())
    write(t, "well_known_http", b"\x00" + j({"m.homeserver": {"base_url": "http://matrix.example.org"}}).encode())
    versions = {"versions": ["v1.11", "v1.15"], "unstable_features": {"io.element.msc4388": True, "org.matrix.msc4108": True, "io.mxqr.rendezvous_long_poll": True}}
    write(t, "versions", b"\x01" + j(versions).encode())


def b64(raw):
    return base64.b64encode(raw).decode().rstrip("=")


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(obj, user, key_id, key):
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    sig = b64(key.sign(canonical(unsigned)))
    obj.setdefault("signatures", {}).setdefault(user, {})[key_id] = sig


def keys_query():
    user = "@alice:example.org"
    keys = {name: Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i, name in enumerate(["master", "self_signing", "user_signing", "device"])}
    public = {n: b64(k.public_key().public_bytes_raw()) for n, k in keys.items()}

    def cs(usage):
        return {"user_id": user, "usage": [usage], "keys": {f"ed25519:{public[usage]}": public[usage]}}

    master, self_signing, user_signing = cs("master"), cs("self_signing"), cs("user_signing")
    sign(self_signing, user, f"ed25519:{public['master']}", keys["master"])
    sign(user_signing, user, f"ed25519:{public['master']}", keys["master"])
    device = {
        "user_id": user,
        "device_id": "DEVICEID",
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {"curve25519:DEVICEID": b64(bytes(range(32))), "ed25519:DEVICEID": public["device"]},
    }
    sign(device, user, "ed25519:DEVICEID", keys["device"])
    sign(device, user, f"ed25519:{public['self_signing']}", keys["self_signing"])
    answer = {
        "failures": {},
        "device_keys": {user: {"DEVICEID": device}},
        "master_keys": {user: master},
        "self_signing_keys": {user: self_signing},
        "user_signing_keys": {user: user_signing},
    }
    write("client_keys_query", "signed", j(answer))
    write("client_keys_query", "empty", j({"failures": {}, "device_keys": {}, "master_keys": {}}))


if __name__ == "__main__":
    rendezvous()
    metadata()
    grants()
    discovery()
    keys_query()
