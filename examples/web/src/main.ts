import { createApolloApi } from './apollo';
import { createUrqlApi } from './urql';
import { getAccessToken } from './auth';
import { ApiError, type AuthApi, type Viewer } from './api';
import { FORGOT_PASSWORD_PATH, RESET_PASSWORD_PATH } from './config';
import { SESSION_CLOSE_CODES } from './live';

// A reset link's token is taken out of the address bar before anything else
// runs, so it does not stay in the history, a bookmark or a Referer. From here
// on it lives in memory only, is never logged, and is sent nowhere but in the
// resetPassword mutation.
const resetToken = location.pathname === RESET_PASSWORD_PATH ? takeTokenFromUrl() : null;

function takeTokenFromUrl(): string | null {
  const url = new URL(location.href);
  if (!url.searchParams.has('token')) return null;
  const token = url.searchParams.get('token');
  url.searchParams.delete('token');
  history.replaceState(history.state, '', url.pathname + url.search + url.hash);
  return token || null;
}

// ?client=apollo (default) or ?client=urql
const clientParam = new URLSearchParams(location.search).get('client');
const api: AuthApi = clientParam === 'urql' ? createUrqlApi() : createApolloApi();

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

$('client-name').textContent = api.name;

// In-app links keep the ?client= choice.
for (const a of document.querySelectorAll<HTMLAnchorElement>('a[data-route]')) {
  a.href = clientParam ? `${a.dataset.route}?client=${encodeURIComponent(clientParam)}` : a.dataset.route!;
}

/** Shows a message in an <output>, with a state for styling and tests. */
function say(out: HTMLOutputElement, state: string, text: string, reason = ''): void {
  out.textContent = text;
  out.dataset.state = state;
  out.dataset.reason = reason;
}

/** A failure as a user can read it (used where no reason has its own message). */
function describe(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.reason === 'INVALID_EMAIL') return 'Enter an address like name@example.com.';
    return error.message; // RATE_LIMITED: "Too many requests; retry in N seconds"
  }
  return `Something went wrong (${error instanceof Error ? error.message : String(error)}); try again.`;
}

// ---------------------------------------------------------------- /

function homePage(): void {
  const form = $<HTMLFormElement>('login-form');
  const email = $<HTMLInputElement>('email');
  const password = $<HTMLInputElement>('password');
  const status = $<HTMLOutputElement>('status');
  const errorOut = $<HTMLOutputElement>('error');
  const meView = $<HTMLElement>('me-view');
  const secondFactorForm = $<HTMLFormElement>('second-factor-form');
  const secondFactorCode = $<HTMLInputElement>('second-factor-code');
  const passkeyStatus = $<HTMLOutputElement>('passkey-status');
  // A login's second-factor challenge: in memory only, for the second step.
  let challenge: string | null = null;
  const liveOut = $<HTMLOutputElement>('live');

  function show(viewer: Viewer | null, error?: unknown): void {
    if (viewer) follow();
    else if (unfollow) stopFollowing();
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

  // ---- sessionEvents: while logged in, the page follows its session over a
  // WebSocket, so a logout in another tab (or anything else that ends the
  // session) shows here at once, and so does a new role.
  let unfollow: (() => void) | null = null;

  function live(state: string, code?: number | null): void {
    liveOut.dataset.state = state;
    liveOut.dataset.code = code == null ? '' : String(code);
    liveOut.textContent = code == null ? state : `${state} (${code})`;
  }

  function follow(): void {
    if (unfollow) return;
    live('connecting');
    unfollow = api.sessionEvents({
      next(event) {
        if (event.kind === 'SESSION_ENDED') sessionEnded();
        else if (event.kind === 'ROLE_CHANGED' && event.role) $('me-role').textContent = event.role;
      },
      socket: live,
      error(closeCode, error) {
        // 4401/4403: no token, or one refused (the session is gone). A GraphQL
        // UNAUTHENTICATED error for the subscription means the same.
        if ((closeCode !== null && SESSION_CLOSE_CODES.has(closeCode)) || (error instanceof ApiError && error.code === 'UNAUTHENTICATED')) {
          sessionEnded();
        } else {
          // graphql-ws gave up reconnecting (server or network away): the page
          // stays as it is; the next successful action subscribes again.
          stopFollowing('failed');
        }
      },
    });
  }

  /** Unsubscribes, which closes the socket. */
  function stopFollowing(state = 'off'): void {
    const stop = unfollow;
    unfollow = null;
    stop?.();
    live(state);
  }

  /** The session ended elsewhere: logged out at once, without a reload or a request. */
  function sessionEnded(): void {
    stopFollowing('ended');
    api.forget();
    show(null, new ApiError('Your session has ended (logged out elsewhere, revoked, or the password was changed). Log in again.', undefined, 'SESSION_ENDED'));
  }

  async function run(action: () => Promise<Viewer | null>): Promise<void> {
    status.dataset.state = 'busy';
    try {
      const viewer = await action();
      askSecondFactor(null);
      show(viewer);
    } catch (e) {
      // The password held; the session waits for the second factor.
      if (e instanceof ApiError && e.reason === 'SECOND_FACTOR_REQUIRED' && e.challenge) askSecondFactor(e.challenge);
      // A dead challenge (five wrong codes, expired): back to the password.
      else if (e instanceof ApiError && e.reason === 'INVALID_SECOND_FACTOR' && !secondFactorForm.hidden) secondFactorCode.select();
      show(null, e);
    }
  }

  /** Shows (with a challenge) or hides the second-factor step. */
  function askSecondFactor(next: string | null): void {
    challenge = next;
    secondFactorForm.hidden = next === null;
    secondFactorCode.value = '';
    if (next !== null) secondFactorCode.focus();
  }

  secondFactorForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const current = challenge;
    if (!current) return;
    void run(() => api.verifySecondFactor(current, secondFactorCode.value));
  });
  $('second-factor-passkey').addEventListener('click', () => {
    const current = challenge;
    if (current) void run(() => api.passkeyLogin(current));
  });
  $('passkey-login').addEventListener('click', () => {
    stopFollowing();
    void run(() => api.passkeyLogin());
  });
  $('add-passkey').addEventListener('click', () => {
    say(passkeyStatus, 'busy', 'Waiting for the passkey…');
    void api.addPasskey('Passkey on this device').then(
      () => say(passkeyStatus, 'added', 'Passkey added: you can sign in with it.'),
      // REAUTHENTICATION_REQUIRED: the sign-in is older than the server allows for this.
      (e) => say(passkeyStatus, 'error', describe(e), e instanceof ApiError ? (e.reason ?? e.code) : ''),
    );
  });

  // A login or registration starts another session: the socket of the one
  // before (if any) is closed first, and the new one follows the new session.
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    stopFollowing();
    void run(() => api.login(email.value, password.value));
  });
  $('register').addEventListener('click', () => {
    if (!form.reportValidity()) return;
    stopFollowing();
    void run(() => api.register(email.value, password.value));
  });
  $('refresh-me').addEventListener('click', () => void run(() => api.me()));
  $('logout').addEventListener('click', () => {
    // The socket closes first: this tab's own SESSION_ENDED is no news to it.
    stopFollowing();
    void run(async () => (await api.logout(), null));
  });

  // After a reload the access token is gone: `me` fails with MISSING_TOKEN, the
  // client refreshes through the cookie and retries, so a live session resumes.
  void run(() => api.me());
}

// ---------------------------------------------------------------- /forgot-password

function forgotPasswordPage(): void {
  const form = $<HTMLFormElement>('forgot-form');
  const email = $<HTMLInputElement>('forgot-email');
  const submit = $<HTMLButtonElement>('forgot-submit');
  const out = $<HTMLOutputElement>('forgot-message');

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    say(out, 'busy', 'Sending…');
    submit.disabled = true;
    void (async () => {
      try {
        // The server answers the same for every well-formed address, registered
        // or not, and so does the page: it must not tell who has an account.
        await api.requestPasswordReset(email.value);
        say(out, 'sent', 'If an account exists for that address, a link to choose a new password is on its way. Check your mail.');
      } catch (e) {
        say(out, 'error', describe(e), e instanceof ApiError ? (e.reason ?? e.code) : '');
      } finally {
        submit.disabled = false;
      }
    })();
  });
}

// ---------------------------------------------------------------- /reset-password

function resetPasswordPage(initialToken: string | null): void {
  let token = initialToken;
  const form = $<HTMLFormElement>('reset-form');
  const password = $<HTMLInputElement>('new-password');
  const submit = $<HTMLButtonElement>('reset-submit');
  const out = $<HTMLOutputElement>('reset-message');

  /** The link is spent (or there is none): forget the token, close the form. */
  const finish = (state: string, text: string, reason = ''): void => {
    token = null;
    password.value = '';
    form.hidden = true;
    say(out, state, text, reason);
  };

  if (!token) {
    finish('missing', 'This page needs the link from a password-reset mail. Ask for a new link below.');
    return;
  }

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (!token) return;
    const spent = token;
    say(out, 'busy', 'Saving…');
    submit.disabled = true;
    void (async () => {
      try {
        await api.resetPassword(spent, password.value);
        finish('done', 'Your password has been changed, and every session of your account has ended. Log in with your new password.');
      } catch (e) {
        const reason = e instanceof ApiError ? e.reason : undefined;
        if (reason === 'LINK_INVALID_OR_EXPIRED') {
          finish('invalid', 'This link is invalid or has expired: a link works once, for a limited time, and only the newest one does. Ask for a new link below.', reason);
        } else if (reason === 'WEAK_PASSWORD') {
          // Checked before the link: it still works, so the form stays.
          say(out, 'weak', `${(e as ApiError).message}. Choose another password.`, reason);
          password.focus();
        } else {
          say(out, 'error', describe(e), e instanceof ApiError ? (e.reason ?? e.code) : '');
        }
      } finally {
        submit.disabled = false;
      }
    })();
  });
}

// ---------------------------------------------------------------- routing

if (location.pathname === RESET_PASSWORD_PATH) {
  $('reset-view').hidden = false;
  resetPasswordPage(resetToken);
} else if (location.pathname === FORGOT_PASSWORD_PATH) {
  $('forgot-view').hidden = false;
  forgotPasswordPage();
} else {
  $('home-view').hidden = false;
  homePage();
}
