// The harness of the console's browser test: it builds caddy-agentwrit,
// starts it on free loopback ports with an embedded broker, a gateway, a
// backend and the console, and speaks the broker API as an agent would.
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateKeyPairSync, sign, randomBytes } from 'node:crypto';

export const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

// freePort asks the kernel for an unused loopback port.
function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function waitFor(url, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      const r = await fetch(url);
      if (r.status < 500) return;
    } catch { /* not up yet */ }
    if (Date.now() > deadline) throw new Error(`${url} did not come up in ${ms} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// start builds and runs caddy-agentwrit; stop() ends it and removes its files.
export async function start() {
  const dir = mkdtempSync(join(tmpdir(), 'console-e2e-'));
  const secret = randomBytes(18).toString('base64url');
  const [broker, gateway, backend, consolePort] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const caddyfile = `{
	admin off
	persist_config off
	agentwrit {
		admin_secret {env.AGENTWRIT_ADMIN_SECRET}
		database ${join(dir, 'broker.db')}
	}
}
http://127.0.0.1:${broker} {
	agentwrit_broker
}
http://127.0.0.1:${backend} {
	respond "hello {http.request.header.X-AgentWrit-Agent-ID}"
}
http://127.0.0.1:${gateway} {
	agentwrit {
		require GET /orders/{id} read:orders:{id}
		require GET /reports/{rest...} read:reports:*
		unmapped deny
	}
	reverse_proxy 127.0.0.1:${backend}
}
http://127.0.0.1:${consolePort} {
	agentwrit_console
}
`;
  const config = join(dir, 'Caddyfile');
  writeFileSync(config, caddyfile);
  const bin = join(dir, 'caddy-agentwrit');
  execFileSync('go', ['build', '-o', bin, './cmd/caddy-agentwrit'], { cwd: repo, stdio: 'inherit' });
  const proc = spawn(bin, ['run', '--config', config, '--adapter', 'caddyfile'], {
    cwd: dir,
    env: { ...process.env, AGENTWRIT_ADMIN_SECRET: secret, XDG_DATA_HOME: join(dir, 'data'), XDG_CONFIG_HOME: join(dir, 'config'), HOME: dir },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  proc.stderr.on('data', (d) => { log = (log + d).slice(-20000); });
  const exited = new Promise((ok) => proc.on('exit', ok));
  const url = (port) => (path) => `http://127.0.0.1:${port}${path}`;
  const env = {
    dir, secret, proc,
    broker: url(broker), gateway: url(gateway), console: url(consolePort),
    log: () => log,
    async stop() {
      proc.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await waitFor(env.console('/'), 60000);
    await waitFor(env.broker('/v1/health'), 10000);
  } catch (e) {
    await env.stop();
    throw new Error(`${e.message}\n${log}`);
  }
  return env;
}

// json sends a JSON request and returns status and parsed body.
export async function json(method, url, { token, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  return { status: r.status, data };
}

export async function adminToken(env) {
  const r = await json('POST', env.broker('/v1/admin/auth'), { body: { secret: env.secret } });
  if (r.status !== 200) throw new Error(`admin auth: ${r.status} ${JSON.stringify(r.data)}`);
  return r.data.access_token;
}

// register makes a launch token through the admin API and registers a new
// agent with an Ed25519 key: challenge, sign the nonce's bytes, register.
// It returns the broker's status and answer (agent_id, access_token).
export async function register(env, { scope, orch = 'orch-e2e', task = 'task-e2e', name = 'console-e2e' }) {
  const admin = await adminToken(env);
  const lt = await json('POST', env.broker('/v1/admin/launch-tokens'), {
    token: admin, body: { agent_name: name, allowed_scope: scope },
  });
  if (lt.status !== 201 && lt.status !== 200) throw new Error(`launch token: ${lt.status} ${JSON.stringify(lt.data)}`);
  const ch = await json('GET', env.broker('/v1/challenge'));
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  const signature = sign(null, Buffer.from(ch.data.nonce, 'hex'), privateKey).toString('base64');
  return json('POST', env.broker('/v1/register'), {
    body: {
      launch_token: lt.data.launch_token, nonce: ch.data.nonce, public_key: raw.toString('base64'),
      signature, orch_id: orch, task_id: task, requested_scope: scope,
    },
  });
}
