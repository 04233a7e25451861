/**
 * The tokens a logged-in client holds, and the one place they are refreshed.
 *
 * `POST /auth/login` and `POST /auth/refresh` answer
 * `{access_token, refresh_token, expires_in_secs}`; every refresh rotates the
 * refresh token, and presenting a rotated one revokes the session
 * (docs/ARCHITECTURE.md, "Connecting"). So refreshes are single-flight: one
 * request at a time, shared by every caller.
 */

import { ApiError } from "./errors.js";

/** An access token and the moment it stops being accepted. */
export interface AccessToken {
  readonly token: string;
  /** Epoch milliseconds. */
  readonly expiresAtMs: number;
}

/** Where the REST client and the gateway get their access token. */
export interface TokenProvider {
  /**
   * A usable access token, refreshed first when it is close to expiry, or
   * when `rejected` names the token the server just refused (then only if
   * no newer one is already held). Rejects with an {@link ApiError} 401 when
   * the session is over.
   */
  accessToken(options?: { readonly rejected?: string; readonly minValidityMs?: number }): Promise<AccessToken>;
}

/** What the login and refresh routes answer. */
export interface TokenPair {
  readonly access_token: string;
  readonly refresh_token: string;
  readonly expires_in_secs: number;
}

/** The tokens of a session, as an app may persist them. */
export interface SessionTokens {
  readonly accessToken: string;
  readonly refreshToken: string;
  /** Epoch milliseconds. */
  readonly expiresAtMs: number;
}

export interface SessionOptions {
  /** Exchanges a refresh token for a new pair (`POST /auth/refresh`). */
  readonly refresh: (refreshToken: string) => Promise<TokenPair>;
  /** Tokens restored from storage. */
  readonly tokens?: SessionTokens;
  /** Called whenever the tokens change; `null` when the session ended. */
  readonly onChange?: (tokens: SessionTokens | null) => void;
  /** The clock, in epoch milliseconds. Default `Date.now`. */
  readonly now?: () => number;
  /** Refresh when the access token has less than this left. Default 30 s. */
  readonly minValidityMs?: number;
}

export class Session implements TokenProvider {
  private current: SessionTokens | null;
  private inflight: Promise<AccessToken> | null = null;
  private readonly options: SessionOptions;
  private readonly now: () => number;

  constructor(options: SessionOptions) {
    this.options = options;
    this.now = options.now ?? Date.now;
    this.current = options.tokens ?? null;
  }

  /** The tokens held now, or `null` when logged out. */
  get tokens(): SessionTokens | null {
    return this.current;
  }

  /** Stores a pair the api just answered. */
  setPair(pair: TokenPair): SessionTokens {
    const tokens: SessionTokens = {
      accessToken: pair.access_token,
      refreshToken: pair.refresh_token,
      expiresAtMs: this.now() + pair.expires_in_secs * 1000,
    };
    this.set(tokens);
    return tokens;
  }

  /** Replaces the tokens (e.g. restored from storage), or ends the session with `null`. */
  set(tokens: SessionTokens | null): void {
    this.current = tokens;
    this.options.onChange?.(tokens);
  }

  async accessToken(options: { readonly rejected?: string; readonly minValidityMs?: number } = {}): Promise<AccessToken> {
    const held = this.current;
    if (held === null) throw new ApiError(401, "invalid_credentials", { message: "not logged in" });
    const minValidity = options.minValidityMs ?? this.options.minValidityMs ?? 30_000;
    const rejected = options.rejected !== undefined && options.rejected === held.accessToken;
    if (!rejected && held.expiresAtMs - this.now() > minValidity) {
      return { token: held.accessToken, expiresAtMs: held.expiresAtMs };
    }
    return this.refresh();
  }

  /** Refreshes now (single-flight); ends the session if the api refuses. */
  refresh(): Promise<AccessToken> {
    if (this.inflight === null) {
      this.inflight = this.runRefresh().finally(() => {
        this.inflight = null;
      });
    }
    return this.inflight;
  }

  private async runRefresh(): Promise<AccessToken> {
    const held = this.current;
    if (held === null) throw new ApiError(401, "invalid_credentials", { message: "not logged in" });
    try {
      const tokens = this.setPair(await this.options.refresh(held.refreshToken));
      return { token: tokens.accessToken, expiresAtMs: tokens.expiresAtMs };
    } catch (error) {
      // Only a definite "no" ends the session; a network error may pass.
      if (error instanceof ApiError && error.status === 401 && this.current === held) this.set(null);
      throw error;
    }
  }
}
