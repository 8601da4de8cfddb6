// The console's shell: sign-in, navigation, and the current view.
import { signIn, signOut, signedIn, setSignOutHandler } from './api.js';
import { clear, message } from './dom.js';
import { forgetVerification } from './verify.js';
import * as overview from './overview.js';
import * as agents from './agents.js';
import * as audit from './audit.js';
import * as usage from './usage.js';

const views = { overview, agents, audit, usage };
let current = null; // { name, stop }

const $ = (id) => document.getElementById(id);

function show(name) {
  if (current) current.stop();
  const el = clear($('view'));
  el.dataset.view = name;
  for (const b of document.querySelectorAll('#nav [data-view]')) {
    b.setAttribute('aria-current', b.dataset.view === name ? 'page' : 'false');
  }
  current = { name, stop: views[name].mount(el) || (() => {}) };
}

function signedOut(reason) {
  if (current) current.stop();
  current = null;
  forgetVerification();
  clear($('view')).hidden = true;
  $('nav').hidden = true;
  $('signin').hidden = false;
  $('session').textContent = '';
  message($('signin-message'), reason, Boolean(reason));
  $('secret').focus();
}

function start() {
  setSignOutHandler(signedOut);
  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = $('secret');
    const secret = input.value;
    input.value = '';
    message($('signin-message'), 'Signing in…');
    try {
      const ttl = await signIn(secret);
      $('signin').hidden = true;
      $('nav').hidden = false;
      $('view').hidden = false;
      message($('signin-message'), '');
      const until = new Date(Date.now() + ttl * 1000);
      $('session').textContent = ttl > 0 ? `session until ${until.toLocaleTimeString()}` : '';
      show('overview');
    } catch (e) {
      message($('signin-message'), `Sign-in failed: ${e.message}`, true);
    }
  });
  for (const b of document.querySelectorAll('#nav [data-view]')) {
    b.addEventListener('click', () => { if (signedIn()) show(b.dataset.view); });
  }
  $('signout').addEventListener('click', () => signOut('Signed out.'));
  signedOut('');
}

start();
