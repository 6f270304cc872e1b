#!/usr/bin/env python3
"""Print a dev access token (HS256) for `make run`: devtoken.py SECRET SUB [TIER]."""
import base64, hashlib, hmac, json, sys, time


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main() -> None:
    secret, sub = sys.argv[1], sys.argv[2]
    tier = sys.argv[3] if len(sys.argv) > 3 else "free"
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": "default"}
    claims = {"sub": sub, "tier": tier, "type": "access", "iat": now, "exp": now + 7 * 86400}
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    print(signing + "." + b64(sig))


if __name__ == "__main__":
    main()
