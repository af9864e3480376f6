"""Read a key's lastSeenAt with the official hevlayer client (get_key and list_keys).

usage: hevlayer_last_seen.py BASE_URL ADMIN_TOKEN KEY_NAME
Prints {"get": <lastSeenAt>, "list": <lastSeenAt>}.
"""
import asyncio
import json
import sys

import hevlayer


async def main(base_url: str, admin: str, name: str) -> dict:
    client = hevlayer.AsyncHevlayer(api_key=admin, base_url=base_url, timeout=10)
    got = await client.get_key(name)
    listed = await client.list_keys()
    return {
        "get": got.lastSeenAt,
        "list": next((k.lastSeenAt for k in listed.keys if k.name == name), "absent"),
    }


try:
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))))
except hevlayer.HevlayerError as e:
    print(json.dumps({"error": {"status": e.status_code, "message": e.message}}))
    sys.exit(3)
