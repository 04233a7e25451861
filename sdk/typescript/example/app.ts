/**
 * A minimal chat page built only on the SDK (`../src/index.ts`).
 *
 * What it shows: log in; the user's guilds and each guild's channels; the
 * picked channel's history and its new messages as they arrive; a composer;
 * the guild's members with a kick button. Whenever the user can no longer
 * see a guild or a channel, it leaves the lists:
 *
 * - `workspace_member_remove` / `workspace_member_ban` naming this user
 *   (the gateway sends the removal to the removed user's own sockets too)
 *   drops the whole guild;
 * - `channel_delete` drops the channel;
 * - an event that may change permissions (roles, overrides, a member's
 *   role) makes the page list the guild's channels again; a 403/404 there
 *   drops the guild, and channels no longer listed drop out;
 * - after a reconnect that may have lost events (`onMissedEvents`),
 *   everything is listed again.
 *
 * The page subscribes to every text channel it lists (up to the SDK's cap):
 * guild-wide events only reach sockets present in the guild, and it lets the
 * page mark channels with unread messages.
 *
 * Compiled by `npm run build` (script `build:example`) to
 * `dist/example/app.js`; serve the package directory and open
 * `/example/index.html` on the same origin as `/api` and `/gateway/ws`.
 */

import {
  ApiError,
  GatewayClient,
  GatewayError,
  RestClient,
  type Channel,
  type Message,
  type Rest,
  type SessionTokens,
} from "../src/index.js";

type Guild = Rest.GuildsListResponse["guilds"][number];

interface GuildView {
  guild: Guild;
  /** `null` until listed. */
  channels: Channel[] | null;
}

const STORAGE_KEY = "filament-example-session";
const HISTORY_PAGE = 50;

// ---------------------------------------------------------------------------
// DOM

function byTestId<T extends HTMLElement>(id: string): T {
  const element = document.querySelector<T>(`[data-testid="${id}"]`);
  if (element === null) throw new Error(`the page has no [data-testid="${id}"]`);
  return element;
}

const ui = {
  error: byTestId<HTMLDivElement>("error"),
  loginForm: byTestId<HTMLFormElement>("login-form"),
  loginUsername: byTestId<HTMLInputElement>("login-username"),
  loginPassword: byTestId<HTMLInputElement>("login-password"),
  loginSubmit: byTestId<HTMLButtonElement>("login-submit"),
  chat: byTestId<HTMLDivElement>("chat"),
  me: byTestId<HTMLElement>("me"),
  gatewayState: byTestId<HTMLSpanElement>("gateway-state"),
  logout: byTestId<HTMLButtonElement>("logout"),
  guildList: byTestId<HTMLUListElement>("guild-list"),
  channelsTitle: byTestId<HTMLHeadingElement>("channels-title"),
  channelList: byTestId<HTMLUListElement>("channel-list"),
  channelTitle: byTestId<HTMLHeadingElement>("channel-title"),
  messageList: byTestId<HTMLUListElement>("message-list"),
  composer: byTestId<HTMLFormElement>("composer"),
  composerInput: byTestId<HTMLInputElement>("composer-input"),
  memberList: byTestId<HTMLUListElement>("member-list"),
};

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: { readonly [name: string]: string } = {},
  text?: string,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(error: unknown): void {
  const text =
    error instanceof ApiError ? `${error.code} (HTTP ${error.status})` : error instanceof Error ? error.message : String(error);
  ui.error.textContent = text;
  console.error(error);
}

function clearError(): void {
  ui.error.textContent = "";
}

// ---------------------------------------------------------------------------
// State

let rest = new RestClient({ onSessionChange: persistSession });
let gateway: GatewayClient | null = null;
let me: { user_id: string; username: string } | null = null;

const guilds = new Map<string, GuildView>();
let selectedGuild: string | null = null;
let selectedChannel: string | null = null;
/** The selected channel's messages, by id (ULIDs sort by time). */
const messages = new Map<string, Message>();
/** Bumped on every channel switch, so a stale history answer is dropped. */
let historyGeneration = 0;
const unread = new Map<string, number>();
/** `guild/channel` keys whose subscription this connection acknowledged. */
const live = new Set<string>();
let members: string[] = [];
const usernames = new Map<string, string>();
const lookupsInFlight = new Set<string>();
/** Per guild: a channel listing in flight, and whether another is due after it. */
const refreshes = new Map<string, { again: boolean }>();

function persistSession(tokens: SessionTokens | null): void {
  try {
    if (tokens === null) sessionStorage.removeItem(STORAGE_KEY);
    else sessionStorage.setItem(STORAGE_KEY, JSON.stringify(tokens));
  } catch {
    // Storage may be unavailable (private mode); the session just is not kept.
  }
}

function restoredSession(): SessionTokens | null {
  try {
    const raw = sessionStorage.getItem(STORAGE_KEY);
    if (raw === null) return null;
    const value = JSON.parse(raw) as Partial<SessionTokens>;
    if (
      typeof value.accessToken === "string" &&
      typeof value.refreshToken === "string" &&
      typeof value.expiresAtMs === "number"
    ) {
      return { accessToken: value.accessToken, refreshToken: value.refreshToken, expiresAtMs: value.expiresAtMs };
    }
  } catch {
    // Unreadable: log in again.
  }
  return null;
}

// ---------------------------------------------------------------------------
// Rendering

function render(): void {
  renderGuilds();
  renderChannels();
  renderMessages();
  renderMembers();
}

function renderGuilds(): void {
  const items = [...guilds.values()]
    .sort((a, b) => a.guild.name.localeCompare(b.guild.name) || a.guild.guild_id.localeCompare(b.guild.guild_id))
    .map(({ guild }) => {
      const item = element("li", {
        "data-testid": "guild-item",
        "data-guild-id": guild.guild_id,
        "aria-current": String(guild.guild_id === selectedGuild),
      });
      const button = element("button", { type: "button", "data-testid": "guild-button" }, guild.name);
      button.addEventListener("click", () => selectGuild(guild.guild_id));
      item.append(button);
      return item;
    });
  ui.guildList.replaceChildren(...items);
}

function renderChannels(): void {
  const view = selectedGuild === null ? undefined : guilds.get(selectedGuild);
  ui.channelsTitle.textContent = view === undefined ? "Channels" : `Channels of ${view.guild.name}`;
  const items = (view?.channels ?? []).map((channel) => {
    const item = element("li", {
      "data-testid": "channel-item",
      "data-channel-id": channel.channel_id,
      "data-kind": channel.kind,
      "data-unread": String(unread.get(channel.channel_id) ?? 0),
      "data-live": String(live.has(`${view?.guild.guild_id}/${channel.channel_id}`)),
      "aria-current": String(channel.channel_id === selectedChannel),
    });
    const label = channel.kind === "text" ? `# ${channel.name}` : `🔊 ${channel.name}`;
    const button = element("button", { type: "button", "data-testid": "channel-button" }, label);
    if (channel.kind === "text") button.addEventListener("click", () => selectChannel(channel.channel_id));
    else button.disabled = true;
    item.append(button);
    return item;
  });
  ui.channelList.replaceChildren(...items);
}

function selectedChannelInfo(): Channel | undefined {
  if (selectedGuild === null || selectedChannel === null) return undefined;
  return guilds.get(selectedGuild)?.channels?.find((c) => c.channel_id === selectedChannel);
}

function renderMessages(): void {
  const channel = selectedChannelInfo();
  ui.channelTitle.textContent = channel === undefined ? "Pick a channel" : `# ${channel.name}`;
  ui.composer.hidden = channel === undefined;
  const sorted = [...messages.values()].sort((a, b) => (a.message_id < b.message_id ? -1 : a.message_id > b.message_id ? 1 : 0));
  const items = sorted.map((message) => {
    const item = element("li", {
      "data-testid": "message",
      "data-message-id": message.message_id,
      "data-author-id": message.author_id,
    });
    item.append(
      element("span", { "data-testid": "message-author" }, usernames.get(message.author_id) ?? message.author_id),
      element("span", { "data-testid": "message-content" }, message.content),
    );
    return item;
  });
  const list = ui.messageList;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 4;
  list.replaceChildren(...items);
  if (atBottom) list.scrollTop = list.scrollHeight;
  lookUpNames(sorted.map((m) => m.author_id));
}

function renderMembers(): void {
  const items = members.map((userId) => {
    const item = element("li", { "data-testid": "member-item", "data-user-id": userId });
    item.append(element("span", { "data-testid": "member-name" }, usernames.get(userId) ?? userId));
    if (userId !== me?.user_id && selectedGuild !== null) {
      const guildId = selectedGuild;
      const kick = element("button", { type: "button", "data-testid": "kick-button" }, "Kick");
      kick.addEventListener("click", () => void kickMember(guildId, userId));
      item.append(kick);
    }
    return item;
  });
  ui.memberList.replaceChildren(...items);
  lookUpNames(members);
}

/** Fetches usernames not known yet, at most 64 per request. */
function lookUpNames(userIds: readonly string[]): void {
  const wanted = [...new Set(userIds)].filter((id) => !usernames.has(id) && !lookupsInFlight.has(id));
  for (let i = 0; i < wanted.length; i += 64) {
    const batch = wanted.slice(i, i + 64);
    for (const id of batch) lookupsInFlight.add(id);
    rest
      .usersLookup({ user_ids: batch })
      .then(({ users }) => {
        for (const user of users) usernames.set(user.user_id, user.username);
        renderMessages();
        renderMembers();
      })
      .catch(showError)
      .finally(() => {
        for (const id of batch) lookupsInFlight.delete(id);
      });
  }
}

// ---------------------------------------------------------------------------
// Loading

function isGone(error: unknown): boolean {
  return error instanceof ApiError && (error.status === 403 || error.status === 404);
}

/** Lists the user's guilds and every guild's channels; drops what is gone. */
async function loadAll(): Promise<void> {
  const { guilds: listed } = await rest.guildsList();
  const ids = new Set(listed.map((g) => g.guild_id));
  for (const guildId of [...guilds.keys()]) if (!ids.has(guildId)) dropGuild(guildId);
  for (const guild of listed) {
    const view = guilds.get(guild.guild_id);
    if (view === undefined) guilds.set(guild.guild_id, { guild, channels: null });
    else view.guild = guild;
  }
  if (selectedGuild === null && listed[0] !== undefined) selectedGuild = listed[0].guild_id;
  render();
  await Promise.all(listed.map((g) => refreshGuild(g.guild_id)));
  if (selectedGuild !== null) await loadMembers(selectedGuild);
  if (selectedChannel !== null) await loadHistory();
}

/**
 * Lists one guild's channels again (coalesced: at most one listing in
 * flight per guild, and one more after it if asked meanwhile).
 */
async function refreshGuild(guildId: string): Promise<void> {
  const running = refreshes.get(guildId);
  if (running !== undefined) {
    running.again = true;
    return;
  }
  const state = { again: true };
  refreshes.set(guildId, state);
  try {
    while (state.again) {
      state.again = false;
      let channels: Channel[];
      try {
        ({ channels } = await rest.channelsList({ guild_id: guildId }));
      } catch (error) {
        if (isGone(error)) dropGuild(guildId);
        else showError(error);
        return;
      }
      const view = guilds.get(guildId);
      if (view === undefined) return;
      const visible = new Set(channels.map((c) => c.channel_id));
      for (const old of view.channels ?? []) if (!visible.has(old.channel_id)) dropChannel(guildId, old.channel_id);
      view.channels = channels;
      for (const channel of channels) if (channel.kind === "text") subscribe(guildId, channel.channel_id);
      render();
    }
  } finally {
    refreshes.delete(guildId);
  }
}

async function loadMembers(guildId: string): Promise<void> {
  try {
    const page = await rest.membersList({ guild_id: guildId }, { query: { limit: 200 } });
    if (selectedGuild !== guildId) return;
    members = page.members.map((m) => m.user_id);
    renderMembers();
  } catch (error) {
    if (isGone(error)) dropGuild(guildId);
    else showError(error);
  }
}

async function loadHistory(): Promise<void> {
  const guildId = selectedGuild;
  const channelId = selectedChannel;
  if (guildId === null || channelId === null) return;
  const generation = historyGeneration;
  try {
    const page = await rest.messagesList({ guild_id: guildId, channel_id: channelId }, { query: { limit: HISTORY_PAGE } });
    if (generation !== historyGeneration) return;
    // Merge: a message_create may have arrived while the page was on its way.
    for (const message of page.messages) messages.set(message.message_id, message);
    renderMessages();
  } catch (error) {
    if (generation !== historyGeneration) return;
    if (isGone(error)) void refreshGuild(guildId);
    else showError(error);
  }
}

function subscribe(guildId: string, channelId: string): void {
  try {
    gateway?.subscribe(guildId, channelId);
  } catch (error) {
    // Over the SDK's subscription cap: that channel is not live.
    if (!(error instanceof GatewayError)) throw error;
  }
}

// ---------------------------------------------------------------------------
// Losing access

function dropGuild(guildId: string): void {
  const view = guilds.get(guildId);
  if (view === undefined) return;
  for (const channel of view.channels ?? []) {
    gateway?.unsubscribe(guildId, channel.channel_id);
    unread.delete(channel.channel_id);
    live.delete(`${guildId}/${channel.channel_id}`);
  }
  guilds.delete(guildId);
  if (selectedGuild === guildId) {
    selectedGuild = null;
    clearChannel();
    members = [];
  }
  render();
}

function dropChannel(guildId: string, channelId: string): void {
  const view = guilds.get(guildId);
  gateway?.unsubscribe(guildId, channelId);
  unread.delete(channelId);
  live.delete(`${guildId}/${channelId}`);
  if (view?.channels) view.channels = view.channels.filter((c) => c.channel_id !== channelId);
  if (selectedChannel === channelId) clearChannel();
  render();
}

function clearChannel(): void {
  selectedChannel = null;
  historyGeneration += 1;
  messages.clear();
}

// ---------------------------------------------------------------------------
// User actions

function selectGuild(guildId: string): void {
  if (selectedGuild === guildId) return;
  selectedGuild = guildId;
  clearChannel();
  members = [];
  render();
  void loadMembers(guildId);
  void refreshGuild(guildId);
}

function selectChannel(channelId: string): void {
  if (selectedGuild === null) return;
  clearChannel();
  selectedChannel = channelId;
  unread.delete(channelId);
  subscribe(selectedGuild, channelId);
  render();
  void loadHistory();
}

async function kickMember(guildId: string, userId: string): Promise<void> {
  clearError();
  try {
    await rest.moderationKick({ guild_id: guildId, user_id: userId });
    if (selectedGuild === guildId) {
      members = members.filter((id) => id !== userId);
      renderMembers();
    }
  } catch (error) {
    showError(error);
  }
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const content = ui.composerInput.value.trim();
  const guildId = selectedGuild;
  const channelId = selectedChannel;
  if (content === "" || guildId === null || channelId === null) return;
  clearError();
  ui.composerInput.disabled = true;
  rest
    .messagesCreate({ guild_id: guildId, channel_id: channelId }, { content })
    .then((message) => {
      ui.composerInput.value = "";
      // The gateway echoes it too; the map keeps one copy.
      if (selectedChannel === message.channel_id) {
        messages.set(message.message_id, message);
        renderMessages();
      }
    })
    .catch(showError)
    .finally(() => {
      ui.composerInput.disabled = false;
      ui.composerInput.focus();
    });
});

ui.loginForm.addEventListener("submit", (event) => {
  event.preventDefault();
  clearError();
  ui.loginSubmit.disabled = true;
  rest
    .authLogin({ username: ui.loginUsername.value, password: ui.loginPassword.value })
    .then(() => start())
    .catch(showError)
    .finally(() => {
      ui.loginSubmit.disabled = false;
    });
});

ui.logout.addEventListener("click", () => {
  const tokens = rest.session.tokens;
  const done = () => stop();
  if (tokens === null) done();
  else rest.authLogout({ refresh_token: tokens.refreshToken }).catch(showError).finally(done);
});

// ---------------------------------------------------------------------------
// Session lifecycle

async function start(): Promise<void> {
  const profile = await rest.authMe();
  me = { user_id: profile.user_id, username: profile.username };
  usernames.set(profile.user_id, profile.username);
  ui.me.textContent = profile.username;
  ui.me.dataset.userId = profile.user_id;
  ui.loginForm.hidden = true;
  ui.chat.hidden = false;
  ui.loginPassword.value = "";
  gateway = connectGateway();
  await loadAll();
}

function stop(): void {
  gateway?.close();
  gateway = null;
  me = null;
  guilds.clear();
  selectedGuild = null;
  clearChannel();
  members = [];
  unread.clear();
  live.clear();
  rest.session.set(null);
  ui.chat.hidden = true;
  ui.loginForm.hidden = false;
  render();
}

function connectGateway(): GatewayClient {
  const client = new GatewayClient({ url: location.origin, tokens: rest.session });

  client.onStateChange((change) => {
    ui.gatewayState.textContent = change.state;
    ui.gatewayState.dataset.state = change.state;
    if (change.state !== "ready" && live.size > 0) {
      // A new connection: subscriptions are live again once acknowledged.
      live.clear();
      renderChannels();
    }
    if (change.state === "stopped" && change.stopReason !== "closed_by_client") {
      showError(new Error(`gateway stopped: ${change.stopReason ?? "unknown"}`));
      if (change.stopReason === "unauthenticated" || change.stopReason === "access_revoked") stop();
    }
  });
  client.onMissedEvents(() => void loadAll().catch(showError));
  client.onError((error) => console.warn("gateway:", error));
  client.onInvalid((frame) => console.error("gateway: dropped an invalid frame:", frame.reason, frame.detail));

  client.on("subscribed", ({ guild_id, channel_id }) => {
    if (!guilds.has(guild_id)) return;
    live.add(`${guild_id}/${channel_id}`);
    renderChannels();
  });

  client.on("message_create", (message) => {
    if (message.channel_id === selectedChannel) {
      messages.set(message.message_id, message);
      renderMessages();
    } else {
      unread.set(message.channel_id, (unread.get(message.channel_id) ?? 0) + 1);
      if (message.guild_id === selectedGuild) renderChannels();
    }
  });
  client.on("message_update", (update) => {
    const message = messages.get(update.message_id);
    if (message === undefined) return;
    messages.set(update.message_id, { ...message, ...update.updated_fields });
    renderMessages();
  });
  client.on("message_delete", (deletion) => {
    if (messages.delete(deletion.message_id)) renderMessages();
  });

  client.on("channel_create", ({ guild_id, channel }) => {
    const view = guilds.get(guild_id);
    if (view?.channels == null || view.channels.some((c) => c.channel_id === channel.channel_id)) return;
    view.channels = [...view.channels, channel];
    if (channel.kind === "text") subscribe(guild_id, channel.channel_id);
    render();
  });
  client.on("channel_update", ({ guild_id, channel_id, updated_fields }) => {
    const view = guilds.get(guild_id);
    if (view?.channels == null || updated_fields.name === undefined) return;
    const name = updated_fields.name;
    view.channels = view.channels.map((c) => (c.channel_id === channel_id ? { ...c, name } : c));
    render();
  });
  client.on("channel_delete", ({ guild_id, channel_id }) => dropChannel(guild_id, channel_id));

  client.on("workspace_update", ({ guild_id, updated_fields }) => {
    const view = guilds.get(guild_id);
    if (view === undefined) return;
    view.guild = { ...view.guild, ...updated_fields };
    renderGuilds();
    renderChannels();
  });
  const removed = ({ guild_id, user_id }: { guild_id: string; user_id: string }) => {
    if (user_id === me?.user_id) {
      dropGuild(guild_id);
    } else if (guild_id === selectedGuild) {
      members = members.filter((id) => id !== user_id);
      renderMembers();
    }
  };
  client.on("workspace_member_remove", removed);
  client.on("workspace_member_ban", removed);
  client.on("workspace_member_add", ({ guild_id, user_id }) => {
    if (guild_id === selectedGuild && !members.includes(user_id)) {
      members = [...members, user_id];
      renderMembers();
    }
  });

  // What one can see may have changed: list the guild's channels again.
  const recheck = ({ guild_id }: { guild_id: string }) => void refreshGuild(guild_id);
  client.on("workspace_member_update", recheck);
  client.on("workspace_role_update", recheck);
  client.on("workspace_role_delete", recheck);
  client.on("workspace_role_reorder", recheck);
  client.on("workspace_role_assignment_add", recheck);
  client.on("workspace_role_assignment_remove", recheck);
  client.on("workspace_channel_role_override_update", recheck);
  client.on("workspace_channel_permission_override_update", recheck);

  client.connect();
  return client;
}

// ---------------------------------------------------------------------------
// Boot

const saved = restoredSession();
if (saved !== null) {
  rest = new RestClient({ tokens: saved, onSessionChange: persistSession });
  start().catch((error: unknown) => {
    stop();
    if (!(error instanceof ApiError && error.status === 401)) showError(error);
  });
}
document.documentElement.dataset.appReady = "true";
