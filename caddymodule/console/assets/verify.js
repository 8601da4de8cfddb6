// Server-side verification of the audit hash chain. It reads the whole
// chain (minutes at a million events), so it runs only when the operator
// presses the button; the last result of the session is shown with the
// time it was taken.
import { get, SessionEnded } from './api.js';
import { h, clear } from './dom.js';

let last = null; // { text, ok, at }

// forgetVerification drops the last result (on sign-out).
export function forgetVerification() { last = null; }

// verifyChain renders a Verify button and the session's last result into el.
export function verifyChain(el) {
  const out = h('span', { class: 'verify-result', id: 'verify-result' }, 'not verified in this session');
  const button = h('button', { type: 'button', id: 'verify' }, 'Verify chain');
  clear(el).append(button, ' ', out);
  const show = (r) => {
    out.textContent = `${r.text} (checked ${r.at.toLocaleTimeString()})`;
    out.className = r.ok ? 'verify-result ok' : 'verify-result bad';
  };
  async function run() {
    button.disabled = true;
    out.textContent = 'verifying…';
    out.className = 'verify-result';
    try {
      const v = await get('/v1/admin/audit/verify');
      if (v.intact) {
        last = { ok: true, text: `intact: ${v.verified} events verified, head ${v.head_id || '(empty)'} ${v.head_hash}` };
      } else {
        const b = v.broken || {};
        last = { ok: false, text: `BROKEN at event ${b.id} (position ${b.index}): ${b.reason}; ${v.verified} events verified before it` };
      }
      last.at = new Date();
      show(last);
    } catch (e) {
      if (!(e instanceof SessionEnded)) {
        out.textContent = `verification failed: ${e.message}`;
        out.className = 'verify-result bad';
      }
    } finally {
      button.disabled = false;
    }
  }
  button.addEventListener('click', run);
  if (last) show(last);
}
