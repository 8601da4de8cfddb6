// The operator console in real headless Chromium against a real
// caddy-agentwrit (embedded broker, gateway, backend, console). The steps
// share one browser page and run in order.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { start, json, register, adminToken } from './harness.mjs';

const shots = join(dirname(fileURLToPath(import.meta.url)), 'screenshots');
const xssImg = '<img src=x onerror=window.__xss=1>';
const xssScript = '<script>window.__xss=1</script>';

let env;
let browser;
let context;
let page;
let agent; // { agent_id, access_token }
let signedInToken = '';
const pageErrors = [];
const cspReports = [];
const foreign = [];

before(async () => {
  mkdirSync(shots, { recursive: true });
  env = await start();
  const root = typeof process.getuid === 'function' && process.getuid() === 0;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: root ? ['--no-sandbox'] : [], // Chromium's sandbox refuses to run as root (CI)
  });
  context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (/Content Security Policy|Refused to/i.test(m.text())) cspReports.push(m.text()); });
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(env.console('/')) && !u.startsWith('data:')) foreign.push(u);
  });
  page.on('response', async (r) => {
    if (r.url().endsWith('/v1/admin/auth') && r.status() === 200) {
      try { signedInToken = (await r.json()).access_token; } catch { /* body gone */ }
    }
  });
});

after(async () => {
  await browser?.close();
  await env?.stop();
});

async function signIn() {
  await page.fill('#secret', env.secret);
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#nav:not([hidden])');
}

async function view(name) {
  await page.click(`#nav [data-view=${name}]`);
  await page.waitForSelector(`#view[data-view=${name}]`);
}

const gatewayGet = (path, token) => fetch(env.gateway(path), { headers: token ? { Authorization: `Bearer ${token}` } : {} });

test('the page carries the security headers and loads nothing foreign', async () => {
  const resp = await page.goto(env.console('/'));
  assert.equal(resp.status(), 200);
  const h = resp.headers();
  assert.match(h['content-security-policy'], /^default-src 'self'; script-src 'self';/);
  assert.equal(h['x-frame-options'], 'DENY');
  assert.equal(h['x-content-type-options'], 'nosniff');
  assert.equal(h['referrer-policy'], 'no-referrer');
  await page.waitForSelector('#signin:not([hidden])');
});

test('a wrong secret is refused with a message', async () => {
  await page.fill('#secret', 'not-the-secret');
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#signin-message.error');
  assert.match(await page.textContent('#signin-message'), /Sign-in failed/);
  assert.equal(await page.isHidden('#nav'), true);
});

test('sign in shows the overview', async () => {
  await signIn();
  await page.waitForSelector('#overview-cards .card');
  await page.click('#verify');
  await page.waitForSelector('#verify-result.ok');
  assert.match(await page.textContent('#overview-cards'), /Health\s*ok/);
  assert.ok(signedInToken, 'the sign-in answer carried a token');
});

test('a freshly registered agent appears in Agents', async () => {
  const r = await register(env, { scope: ['read:orders:*', 'read:reports:*'] });
  assert.equal(r.status, 200, JSON.stringify(r.data));
  agent = r.data;
  for (const p of ['/orders/1', '/orders/2']) {
    assert.equal((await gatewayGet(p, agent.access_token)).status, 200);
  }
  assert.equal((await gatewayGet('/nowhere', agent.access_token)).status, 403);
  await view('agents');
  const row = page.locator(`tr[data-agent-id="${agent.agent_id}"]`);
  await row.waitFor();
  assert.match(await row.textContent(), /task-e2e/);
  await page.screenshot({ path: join(shots, 'agents.png'), fullPage: true });
});

test('usage shows the scope the agent used', async () => {
  await view('usage');
  const group = page.locator(`section[data-group-id="${agent.agent_id}"]`);
  // The gateway flushes usage every 5 s: ask again until it shows.
  const deadline = Date.now() + 45000;
  for (;;) {
    if (await group.locator('tr.used', { hasText: 'read:orders:*' }).count()) break;
    assert.ok(Date.now() < deadline, 'usage never showed read:orders:* used');
    await page.waitForTimeout(1500);
    await page.click('#usage-filter button[type=submit]');
    await page.waitForTimeout(500);
  }
  assert.match(await group.locator('tr.unused').textContent(), /read:reports:\*\s*never used/);
  assert.match(await group.locator('.suggested').textContent(), /read:orders:/);
  await page.screenshot({ path: join(shots, 'usage.png'), fullPage: true });
});

test('revoking from the console names what dies, and the gateway refuses the agent', async () => {
  await view('agents');
  const row = page.locator(`tr[data-agent-id="${agent.agent_id}"]`);
  // The task dialog counts the task's live agents; cancel changes nothing.
  await row.locator('[data-action=revoke-task]').click();
  await page.waitForSelector('#confirm[open]');
  assert.match(await page.textContent('#confirm-text'), /^Revoke task task-e2e: 1 live agent\(s\)/);
  await page.click('#confirm-cancel');
  await page.waitForSelector('#confirm:not([open])', { state: 'attached' });
  assert.equal((await gatewayGet('/orders/1', agent.access_token)).status, 200);
  await row.locator('[data-action=revoke-agent]').click();
  await page.waitForSelector('#confirm[open]');
  assert.match(await page.textContent('#confirm-text'), new RegExp(`^Revoke agent ${agent.agent_id.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: its 1 live token`));
  await page.click('#confirm-ok');
  await page.waitForSelector('#agents-status:has-text("Revoked agent")');
  await row.waitFor({ state: 'detached' }); // the list refreshed without a reload
  assert.equal((await gatewayGet('/orders/1', agent.access_token)).status, 401);
});

test('the revocation is in the audit trail and the tail brings new events', async () => {
  await view('audit');
  await page.locator('#audit-rows td', { hasText: /^token_revoked$/ }).first().waitFor();
  // A new refused request shows up by the live tail, without a reload.
  assert.equal((await gatewayGet('/orders/3', agent.access_token)).status, 401);
  await page.locator('#audit-rows tr.fresh', { hasText: 'token_revoked_access' }).first().waitFor({ timeout: 15000 });
});

test('verify chain says intact', async () => {
  await page.click('#verify');
  await page.waitForSelector('#verify-result.ok');
  assert.match(await page.textContent('#verify-result'), /^intact: \d+ events verified/);
  await page.screenshot({ path: join(shots, 'audit.png'), fullPage: true });
});

test('stored markup stays inert in every view', async () => {
  // The broker refuses markup in SPIFFE ID segments outright...
  for (const [orch, task] of [[xssImg, 'task-x'], ['orch-x', xssScript]]) {
    const r = await register(env, { scope: ['read:orders:1'], orch, task });
    assert.equal(r.status, 400, `orch ${orch} task ${task}: ${JSON.stringify(r.data)}`);
  }
  // ...but free text gets stored: a launch token's agent name, an app's
  // name, and the paths agents request through the gateway.
  const r = await register(env, { scope: ['read:orders:*', 'read:reports:*'], name: xssImg, task: 'task-xss' });
  assert.equal(r.status, 200, JSON.stringify(r.data));
  const admin = await adminToken(env);
  await json('POST', env.broker('/v1/admin/apps'), { token: admin, body: { name: xssScript, scopes: ['read:orders:*'] } });
  for (const p of [`/orders/${encodeURIComponent(xssImg)}`, `/reports/${encodeURIComponent(xssScript)}`, `/${encodeURIComponent(xssImg)}`]) {
    await gatewayGet(p, r.data.access_token);
    await gatewayGet(p, '');
  }
  await gatewayGet('/orders/1', r.data.access_token);
  await new Promise((ok) => setTimeout(ok, 6000)); // one usage flush
  let sawMarkupAsText = false;
  for (const name of ['overview', 'agents', 'audit', 'usage']) {
    await view(name);
    await page.waitForTimeout(1500);
    if (name === 'agents') {
      await page.check('#agents-filter input[name=all]');
      await page.click('#agents-filter button[type=submit]');
      await page.waitForTimeout(800);
    }
    const groupings = name === 'usage' ? ['agent', 'app', 'launch_token'] : [null];
    for (const g of groupings) {
      if (g) {
        await page.selectOption('#group-by', g);
        await page.click('#usage-filter button[type=submit]');
        await page.waitForTimeout(800);
      }
      const text = await page.textContent('#view');
      if (text.includes(xssImg) || text.includes(xssScript) || text.includes('<img') || text.includes('<script')) sawMarkupAsText = true;
      const found = await page.evaluate(() => ({
        xss: window.__xss,
        imgs: document.querySelectorAll('img').length,
        scripts: [...document.querySelectorAll('script')].filter((s) => s.getAttribute('src') !== '/app.js').length,
        handlers: [...document.querySelectorAll('#view *')].filter((e) => [...e.attributes].some((a) => a.name.startsWith('on'))).length,
      }));
      assert.deepEqual(found, { xss: undefined, imgs: 0, scripts: 0, handlers: 0 }, `view ${name} ${g || ''}`);
    }
  }
  assert.ok(sawMarkupAsText, 'the payloads reached the page, as text');
});

test('overview screenshot after traffic', async () => {
  await view('overview');
  await page.waitForSelector('#decisions svg rect');
  await page.waitForSelector('#verify-result.ok');
  await page.screenshot({ path: join(shots, 'overview.png'), fullPage: true });
});

test('a 401 from the API sends the operator back to sign-in with a message', async () => {
  // Revoke the console's own token behind its back.
  const payload = JSON.parse(Buffer.from(signedInToken.split('.')[1], 'base64url'));
  const admin = await adminToken(env);
  const r = await json('POST', env.broker('/v1/revoke'), { token: admin, body: { level: 'token', target: payload.jti } });
  assert.equal(r.status, 200, JSON.stringify(r.data));
  await page.click('#view .toolbar button'); // Refresh
  await page.waitForSelector('#signin:not([hidden])');
  assert.match(await page.textContent('#signin-message'), /401/);
  assert.equal(await page.locator('#view > *').count(), 0);
});

test('sign-out clears access and leaves nothing behind', async () => {
  await signIn();
  await page.waitForSelector('#overview-cards .card');
  const token = signedInToken;
  const cdp = await context.newCDPSession(page);
  await cdp.send('HeapProfiler.enable');
  let snapshot = '';
  cdp.on('HeapProfiler.addHeapSnapshotChunk', (c) => { snapshot += c.chunk; });
  const heapHasToken = async () => {
    snapshot = '';
    await cdp.send('HeapProfiler.collectGarbage');
    await cdp.send('HeapProfiler.takeHeapSnapshot', { reportProgress: false });
    assert.ok(snapshot.length > 1000, 'took a heap snapshot');
    return snapshot.includes(token);
  };
  assert.equal(await heapHasToken(), true, 'while signed in the token is in the heap (the check can see it)');
  await page.click('#signout');
  await page.waitForSelector('#signin:not([hidden])');
  assert.equal(await page.isHidden('#nav'), true);
  assert.equal(await page.locator('#view > *').count(), 0, 'the views are gone');
  const stored = await page.evaluate(() => ({ local: localStorage.length, session: sessionStorage.length, cookie: document.cookie }));
  assert.deepEqual(stored, { local: 0, session: 0, cookie: '' });
  assert.deepEqual(await context.cookies(), []);
  // The token is not in the page's JavaScript heap any more.
  assert.equal(await heapHasToken(), false, 'the admin token is still in the JS heap');
  // Without the token the page's own requests are refused by the broker.
  const status = await page.evaluate(async () => (await fetch('/v1/admin/status')).status);
  assert.equal(status, 401);
});

test('no page errors, no CSP violations, no foreign requests', () => {
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(cspReports, []);
  assert.deepEqual(foreign, []);
});
