// The browser's half of a passkey ceremony. authgraph sends the options as
// JSON with binary fields in base64url ({"publicKey": {...}}), which the
// WebAuthn Level 3 helpers turn into what navigator.credentials takes; the
// answer goes back as credential.toJSON().

interface Options {
  publicKey: unknown;
}

type JsonCredentialStatics = {
  parseCreationOptionsFromJSON(options: unknown): PublicKeyCredentialCreationOptions;
  parseRequestOptionsFromJSON(options: unknown): PublicKeyCredentialRequestOptions;
};

// In the DOM typings of newer TypeScript releases; declared here for older ones.
const statics = PublicKeyCredential as unknown as JsonCredentialStatics;

/** Whether this browser can do passkeys with JSON options (Chromium 129+, Firefox 119+, Safari 18.4+). */
export const passkeysSupported = (): boolean =>
  typeof PublicKeyCredential !== 'undefined' && typeof statics.parseRequestOptionsFromJSON === 'function';

function answer(credential: Credential | null): unknown {
  if (!credential) throw new Error('no passkey was chosen');
  return (credential as PublicKeyCredential & { toJSON(): unknown }).toJSON();
}

/** navigator.credentials.create with the server's registration options. */
export async function createPasskey(options: unknown): Promise<unknown> {
  const publicKey = statics.parseCreationOptionsFromJSON((options as Options).publicKey);
  return answer(await navigator.credentials.create({ publicKey }));
}

/** navigator.credentials.get with the server's sign-in options. */
export async function usePasskey(options: unknown): Promise<unknown> {
  const publicKey = statics.parseRequestOptionsFromJSON((options as Options).publicKey);
  return answer(await navigator.credentials.get({ publicKey }));
}
