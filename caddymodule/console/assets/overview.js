// Overview: health, database, keys, audit chain, live counts, and the
// gateway's decisions over the last hour.
import { get, SessionEnded } from './api.js';
import { h, clear, svg, table, message } from './dom.js';
import { verifyChain } from './verify.js';

export function mount(el) {
  const status = h('p', { class: 'message' });
  const cards = h('div', { class: 'cards', id: 'overview-cards' });
  const chain = h('div', { id: 'chain' });
  const chart = h('div', { id: 'decisions' });
  const refresh = h('button', { type: 'button' }, 'Refresh');
  el.append(h('h2', null, 'Overview'), h('div', { class: 'toolbar' }, refresh), status, cards,
    h('h3', null, 'Audit chain'), chain, h('h3', null, 'Gateway decisions, last hour'), chart);

  async function load() {
    try {
      const st = await get('/v1/admin/status');
      render(st);
      message(status, `Updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      if (!(e instanceof SessionEnded)) message(status, `Status failed: ${e.message}`, true);
    }
  }

  function render(st) {
    const keys = st.keys || [];
    const count = (state) => keys.filter((k) => k.state === state).length;
    const db = st.database || {};
    clear(cards).append(
      card('Health', st.status, (st.problems || []).join('; ') || `version ${st.version}, up ${st.uptime}s`, st.status !== 'ok'),
      card('Database', db.connected ? 'connected' : 'disconnected', `${db.kind || ''} ${db.location || ''}${db.shared ? ' (shared)' : ''}`, !db.connected),
      card('Signing keys', `${count('active')} active`, `${count('retiring')} retiring`),
      card('Audit head', String(st.audit?.events ?? 0), st.audit?.head_id ? `${st.audit.head_id} ${st.audit.head_hash}` : 'empty chain'),
      card('Live agents', String(st.live_agents ?? 0), `of ${st.agents ?? 0} registered`),
      card('Live tokens', String(st.live_tokens ?? 0), ''),
      card('Revocations', String(st.revocations ?? 0), ''),
    );
    clear(chart).append(decisionChart(st.gateway?.per_minute || []),
      decisionTable(st.gateway?.last_hour || []));
  }

  refresh.addEventListener('click', load);
  load();
  verifyChain(chain);
  const timer = setInterval(load, 10000);
  return () => clearInterval(timer);
}

function card(title, value, detail, bad) {
  return h('div', { class: bad ? 'card bad' : 'card' },
    h('div', { class: 'card-title' }, title), h('div', { class: 'card-value' }, value), h('div', { class: 'card-detail' }, detail));
}

const resultClass = { allow: 'allow', deny: 'deny', report: 'report' };

// decisionChart draws one stacked bar per minute of the last hour.
function decisionChart(perMinute) {
  const now = Math.floor(Date.now() / 60000);
  const minutes = new Map();
  for (const d of perMinute) {
    const m = Math.floor(new Date(d.minute).getTime() / 60000);
    if (!minutes.has(m)) minutes.set(m, {});
    const slot = minutes.get(m);
    slot[d.result] = (slot[d.result] || 0) + d.count;
  }
  let max = 1;
  for (const slot of minutes.values()) max = Math.max(max, Object.values(slot).reduce((a, b) => a + b, 0));
  const w = 600, hgt = 120, bw = w / 60;
  const root = svg('svg', { viewBox: `0 0 ${w} ${hgt + 16}`, class: 'chart', role: 'img' });
  const title = svg('title', {});
  title.textContent = `Gateway decisions per minute (max ${max})`;
  root.appendChild(title);
  for (let i = 0; i < 60; i++) {
    const slot = minutes.get(now - 59 + i) || {};
    let y = hgt;
    for (const r of ['allow', 'report', 'deny']) {
      const n = slot[r] || 0;
      if (!n) continue;
      const bh = (n / max) * hgt;
      y -= bh;
      const rect = svg('rect', { x: i * bw + 1, y, width: bw - 2, height: bh, class: `bar ${resultClass[r]}` });
      const t = svg('title', {});
      t.textContent = `${60 - i} min ago: ${n} ${r}`;
      rect.appendChild(t);
      root.appendChild(rect);
    }
  }
  const axis = svg('text', { x: 0, y: hgt + 14, class: 'axis' });
  axis.textContent = '60 min ago';
  const axisEnd = svg('text', { x: w, y: hgt + 14, class: 'axis end' });
  axisEnd.textContent = `now (max ${max}/min)`;
  root.append(axis, axisEnd);
  return root;
}

function decisionTable(lastHour) {
  if (!lastHour.length) return h('p', { class: 'empty' }, 'No gateway decisions in the last hour.');
  return table(['Result', 'Reason', 'Count'], lastHour.map((d) =>
    h('tr', null, h('td', { class: resultClass[d.result] || '' }, d.result), h('td', null, d.reason || '—'), h('td', { class: 'num' }, d.count))));
}

