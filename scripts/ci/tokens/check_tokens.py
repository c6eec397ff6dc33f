"""keygate's tokens against PyJWT: see scripts/ci/tokens-pyjwt.sh."""

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

URL = os.environ["KEYGATE_URL"]
ADMIN = os.environ["KEYGATE_ADMIN_TOKEN"]


def call(method, path, credential=None, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(URL + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if credential:
        request.add_header("Authorization", f"Bearer {credential}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request) as answer:
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None


def forward_auth(credential):
    return call("GET", "/v1/auth", credential,
                headers={"X-Original-Method": "GET", "X-Original-URI": "/api/v1/invoices/1"})[0]


def issue(key, **body):
    status, answer = call("POST", "/v1/tokens", key, body)
    assert status == 201, (status, answer)
    return answer


def expect(error, token, keys, **options):
    try:
        decode(token, keys, **options)
    except error:
        return
    raise AssertionError(f"PyJWT accepted a token it should refuse with {error.__name__}")


def decode(token, keys, audience=None):
    kid = jwt.get_unverified_header(token)["kid"]
    key = keys[kid]
    return jwt.decode(token, key.key, algorithms=["EdDSA"], audience=audience,
                      options={"require": ["exp", "iat", "sub", "jti"]})


def main():
    status, account = call("POST", "/v1/accounts", ADMIN, {"name": "Acme"})
    assert status == 201, (status, account)
    status, key = call("POST", "/v1/api-keys", ADMIN,
                       {"account_id": account["id"], "name": "tokens", "permissions": ["invoices.*"]})
    assert status == 201, (status, key)

    answer = issue(key["key"], permissions=["invoices.read"], ttl_seconds=120, audience="billing")
    token = answer["token"]
    status, jwks = call("GET", "/.well-known/jwks.json")
    assert status == 200, (status, jwks)
    keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys}
    assert all(k.algorithm_name == "EdDSA" for k in keys.values()), jwks

    claims = decode(token, keys, audience="billing")
    assert claims["sub"] == key["id"], claims
    assert claims["acct"] == account["id"], claims
    assert claims["env"] == "live", claims
    assert claims["scope"] == "invoices.read", claims
    assert claims["aud"] == "billing", claims
    assert claims["jti"] == answer["token_id"], claims
    assert claims["exp"] - claims["iat"] == 120, claims
    print("PyJWT verified the token:", {k: claims[k] for k in ("sub", "scope", "aud", "exp")})

    expect(jwt.InvalidAudienceError, token, keys, audience="someone-else")
    head, payload, signature = token.split(".")
    wider = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    wider["scope"] = "*"
    forged = ".".join([head, base64.urlsafe_b64encode(json.dumps(wider).encode()).rstrip(b"=").decode(), signature])
    expect(jwt.InvalidSignatureError, forged, keys, audience="billing")

    short = issue(key["key"], ttl_seconds=1)["token"]
    decode(short, keys)
    assert forward_auth(short) == 204
    time.sleep(2.1)
    expect(jwt.ExpiredSignatureError, short, keys)
    assert forward_auth(short) == 401, "keygate took an expired token"

    # A token keygate did not sign (same claims, same kid, PyJWT's own Ed25519 key).
    stranger = Ed25519PrivateKey.generate()
    kid = jwt.get_unverified_header(token)["kid"]
    own = dict(claims, exp=int(time.time()) + 60)
    own.pop("aud")
    foreign = jwt.encode(own, stranger, algorithm="EdDSA", headers={"kid": kid})
    assert forward_auth(foreign) == 401, "keygate took a token it did not sign"
    # And one it did (no audience: this keygate expects none).
    assert forward_auth(issue(key["key"])["token"]) == 204
    print("tokens: all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        sys.exit(1)
