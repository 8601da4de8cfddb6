import base64, os, requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

BROKER = os.environ.get("AGENTWRIT_BROKER", "http://localhost:8080")
GATEWAY = os.environ.get("AGENTWRIT_GATEWAY", "http://localhost:8081")

# Operator: admin token → launch token allowing read:orders:*
admin = requests.post(f"{BROKER}/v1/admin/auth", json={"secret": os.environ["AGENTWRIT_ADMIN_SECRET"]}).json()["access_token"]
launch = requests.post(f"{BROKER}/v1/admin/launch-tokens", headers={"Authorization": f"Bearer {admin}"},
                       json={"agent_name": "demo", "allowed_scope": ["read:orders:*"], "max_ttl": 600}).json()["launch_token"]

# Agent: key pair, nonce, signature over the nonce bytes, register.
key = Ed25519PrivateKey.generate()
nonce = requests.get(f"{BROKER}/v1/challenge").json()["nonce"]
reg = requests.post(f"{BROKER}/v1/register", json={
    "launch_token": launch, "nonce": nonce,
    "public_key": base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode(),
    "signature": base64.b64encode(key.sign(bytes.fromhex(nonce))).decode(),
    "orch_id": "demo-orch", "task_id": "demo-task", "requested_scope": ["read:orders:42"],
}).json()
token = reg["access_token"]

auth = {"Authorization": f"Bearer {token}"}
print(requests.get(f"{GATEWAY}/orders/42", headers=auth).text)         # 200: scope read:orders:42
print(requests.get(f"{GATEWAY}/orders/43", headers=auth).status_code)  # 403: not covered
