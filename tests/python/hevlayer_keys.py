"""Drive layergate's control API through the gateway with the official hevlayer client (0.7.3).

usage: hevlayer_keys.py BASE_URL ADMIN_TOKEN
Mints a key, lists keys and vector stores, revokes the key; prints one JSON object.
"""
import asyncio
import json
import sys

import hevlayer


async def main(base_url: str, admin: str) -> dict:
    client = hevlayer.AsyncHevlayer(api_key=admin, base_url=base_url, timeout=10)
    minted = await client.mint_key(
        {"name": "py-cohort", "owner": "acme", "entitlements": {"vectorstore.primary": {"scopes": ["read"], "namespaces": ["cohort-*"]}}}
    )
    listed = await client.list_keys()
    stores = await client.list_vectorstores()
    await client.revoke_key(minted.keyId)
    after = await client.list_keys(includeRevoked=True)
    return {
        "minted": {"keyId": minted.keyId, "name": minted.name, "phase": minted.phase, "token_prefix": minted.token[:4], "token_len": len(minted.token)},
        "listed": sorted(k.name for k in listed.keys),
        "stores": sorted((s.name, s.default) for s in stores.vectorstores),
        "after_revoke": {k.name: k.phase for k in after.keys},
        "token": minted.token,
    }


try:
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
except hevlayer.HevlayerError as e:
    print(json.dumps({"error": {"status": e.status_code, "message": e.message}}))
    sys.exit(3)
