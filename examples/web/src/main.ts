import { createApolloApi } from './apollo';
import { createUrqlApi } from './urql';
import { getAccessToken } from './auth';
import { ApiError, type AuthApi, type Viewer } from './api';

// ?client=apollo (default) or ?client=urql
const api: AuthApi = new URLSearchParams(location.search).get('client') === 'urql' ? createUrqlApi() : createApolloApi();

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const form = $<HTMLFormElement>('login-form');
const email = $<HTMLInputElement>('email');
const password = $<HTMLInputElement>('password');
const status = $<HTMLOutputElement>('status');
const errorOut = $<HTMLOutputElement>('error');
const meView = $<HTMLElement>('me-view');

$('client-name').textContent = api.name;

function show(viewer: Viewer | null, error?: unknown): void {
  meView.hidden = !viewer;
  $('me-id').textContent = viewer?.id ?? '';
  $('me-email').textContent = viewer?.email ?? '';
  $('me-role').textContent = viewer?.role ?? '';
  status.textContent = viewer ? `logged in as ${viewer.email}` : 'logged out';
  status.dataset.state = viewer ? 'logged-in' : 'logged-out';
  // For tests and curiosity: whether a token is held, never the token itself.
  status.dataset.hasToken = String(getAccessToken() !== null);
  if (error instanceof ApiError) {
    errorOut.textContent = [error.code, error.reason, error.message].filter(Boolean).join(' ');
    errorOut.dataset.code = error.code ?? '';
    errorOut.dataset.reason = error.reason ?? '';
  } else if (error) {
    errorOut.textContent = String(error);
    errorOut.dataset.code = errorOut.dataset.reason = '';
  } else {
    errorOut.textContent = '';
    errorOut.dataset.code = errorOut.dataset.reason = '';
  }
}

async function run(action: () => Promise<Viewer | null>): Promise<void> {
  status.dataset.state = 'busy';
  try {
    show(await action());
  } catch (e) {
    show(null, e);
  }
}

form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  void run(() => api.login(email.value, password.value));
});
$('register').addEventListener('click', () => {
  if (!form.reportValidity()) return;
  void run(() => api.register(email.value, password.value));
});
$('refresh-me').addEventListener('click', () => void run(() => api.me()));
$('logout').addEventListener('click', () => void run(async () => (await api.logout(), null)));

// After a reload the access token is gone: `me` fails with MISSING_TOKEN, the
// client refreshes through the cookie and retries, so a live session resumes.
void run(() => api.me());
