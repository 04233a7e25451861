//! The route table (issue 4): one row per REST route of PROTOCOL.md §2 that
//! takes a JSON body, and one per body-less route that changes something.
//! Each row is checked three ways:
//!
//! 1. the happy path answers the status PROTOCOL.md §2 documents;
//! 2. callers without the permission (a plain member, an outsider, no token)
//!    get the refusal PROTOCOL.md §2 documents;
//! 3. bad input derived mechanically from the row's valid body (an unknown
//!    field, each required field missing, each field of the wrong JSON type,
//!    each capped field over its cap, malformed JSON) and a malformed path
//!    id get their documented error.
//!
//! A refused call must write nothing, and that is observed, not assumed:
//! around every refused call the row's probes (the GETs that show what the
//! route would change, the audit log when the route is audited) are read
//! and compared, then a sentinel message is posted that must be the next
//! frame on the guild's sockets, so no event went out either. The happy
//! call must then change what the probes see and announce its event: proof
//! that the probes and the sockets would have caught a write.
//!
//! Each row runs in a world of its own (users, guild, sockets) so rows
//! cannot disturb each other, and mismatches are collected, so one run
//! names every failing row. Raw-body uploads and the GET routes are covered
//! by the per-area test files; [`COVERED_ELSEWHERE`] names those tests and
//! `the_table_covers_every_contract_route` checks that they exist.

mod support;

use filament_allinone::StackConfig;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Backends, PASSWORD, Socket, TestStack, User};

// --- the table's vocabulary -----------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Post,
    Patch,
    Delete,
}

impl Verb {
    fn method(self) -> Method {
        match self {
            Self::Get => Method::GET,
            Self::Post => Method::POST,
            Self::Patch => Method::PATCH,
            Self::Delete => Method::DELETE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

/// Who makes a call, in the row's world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// No token at all.
    Anonymous,
    /// Created the guild: legacy owner with `workspace_owner`.
    Owner,
    /// A plain member, subscribed to the guild like the owner.
    Member,
    /// Another plain member: the object of member routes.
    Target,
    /// Not a member of the guild.
    Outsider,
    /// Banned from the guild ([`Need::Banned`]).
    Banned,
}

/// A refusal: who calls with the valid body, and what they must get.
#[derive(Debug, Clone, Copy)]
struct Denial {
    who: Who,
    status: u16,
    error: &'static str,
}

const NO_TOKEN: Denial = Denial {
    who: Who::Anonymous,
    status: 401,
    error: "invalid_credentials",
};
const MEMBER_FORBIDDEN: Denial = Denial {
    who: Who::Member,
    status: 403,
    error: "forbidden",
};
const OUTSIDER_FORBIDDEN: Denial = Denial {
    who: Who::Outsider,
    status: 403,
    error: "forbidden",
};
/// Friend requests and drafts that are not the caller's do not exist for
/// them (PROTOCOL.md §2.4, §2.12).
const MEMBER_NOT_FOUND: Denial = Denial {
    who: Who::Member,
    status: 404,
    error: "not_found",
};
const BANNED_JOIN: Denial = Denial {
    who: Who::Banned,
    status: 403,
    error: "directory_join_user_banned",
};

/// A route's own permission: a plain member and an outsider are refused.
const STAFF_ONLY: &[Denial] = &[NO_TOKEN, MEMBER_FORBIDDEN, OUTSIDER_FORBIDDEN];
/// A member route: only an outsider is refused.
const MEMBERS_ONLY: &[Denial] = &[NO_TOKEN, OUTSIDER_FORBIDDEN];
/// Any signed-in user may call it.
const SIGNED_IN: &[Denial] = &[NO_TOKEN];

/// The JSON type of a body field, with its cap where PROTOCOL.md §4 has one.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A string of at most this many bytes.
    Text(Option<usize>),
    /// A string of at most this many bytes, or `null`.
    NullableText(Option<usize>),
    Bool,
    /// An integer of at most this value.
    Int(Option<i64>),
    /// An array of strings, at most this many. Only lists of ids have a
    /// cap, so fresh ULIDs go over it.
    List(Option<usize>),
}

impl Kind {
    /// A value of another JSON type (never `null`, which an optional field
    /// may take for "absent").
    fn wrong_type(self) -> Value {
        match self {
            Self::Text(_) | Self::NullableText(_) => json!(123),
            Self::Bool => json!("yes"),
            Self::Int(_) => json!("1"),
            Self::List(_) => json!("not-an-array"),
        }
    }

    /// A value of the right type just over the cap, if there is one.
    fn over_cap(self) -> Option<Value> {
        match self {
            Self::Text(cap) | Self::NullableText(cap) => cap.map(|cap| json!("a".repeat(cap + 1))),
            Self::Int(max) => max.map(|max| json!(max + 1)),
            Self::List(cap) => cap.map(|cap| {
                let ids: Vec<String> = (0..=cap)
                    .map(|_| ulid::Ulid::generate().to_string())
                    .collect();
                json!(ids)
            }),
            Self::Bool => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

/// 26 characters: a 27-character id is over the cap (and no ULID).
const ID: Kind = Kind::Text(Some(26));

/// What a probe reads to see whether a call wrote something.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// `GET` of a path template, as someone.
    Get(&'static str, Who),
    /// Logging in with the body's username and password: does the account
    /// exist?
    Login,
    /// The voice roster a fresh subscriber to the voice channel is told.
    VoiceRoster,
}

const AUDIT: Probe = Probe::Get("/guilds/{g}/audit?limit=100", Who::Owner);
const GUILDS: Probe = Probe::Get("/guilds", Who::Owner);
const MEMBERS: Probe = Probe::Get("/guilds/{g}/members?limit=200", Who::Owner);
const ROLES: Probe = Probe::Get("/guilds/{g}/roles", Who::Owner);
const CHANNELS: Probe = Probe::Get("/guilds/{g}/channels", Who::Owner);
const MESSAGES: Probe = Probe::Get("/guilds/{g}/channels/{c}/messages?limit=100", Who::Owner);
const PROFILE: Probe = Probe::Get("/auth/me", Who::Owner);
const FRIENDS: Probe = Probe::Get("/friends", Who::Owner);
const FRIEND_REQUESTS: Probe = Probe::Get("/friends/requests", Who::Owner);
const IP_BANS: Probe = Probe::Get("/guilds/{g}/ip-bans", Who::Owner);
const MEMBER_PERMISSIONS: Probe =
    Probe::Get("/guilds/{g}/channels/{c}/permissions/self", Who::Member);
const TARGET_PERMISSIONS: Probe =
    Probe::Get("/guilds/{g}/channels/{c}/permissions/self", Who::Target);
const ATTACHMENT: Probe = Probe::Get("/guilds/{g}/channels/{c}/attachments/{a}", Who::Owner);

/// What a row's world needs beyond the basics (see [`World::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A pending friend request from the target to the owner: `{req}`.
    FriendRequest,
    /// The owner and the member are friends.
    Friends,
    /// A user who joined from [`VICTIM_IP`]: `{victim}`.
    Victim,
    /// The victim's address banned in the guild: `{ban}`.
    IpBan,
    /// A user banned from the guild ([`Who::Banned`]).
    Banned,
    /// The role `{r}` assigned to the target.
    Assigned,
    /// The owner's reaction `{emoji}` on `{m}`.
    Reaction,
    /// An upload of the owner's in the text channel, not yet sent: `{a}`.
    Attachment,
    /// The owner and the member in the voice channel `{v}`, and the
    /// sockets subscribed to it.
    Voice,
}

/// One route. Templates name the row's world with `{…}` placeholders (see
/// [`World::vars`]).
#[derive(Debug, Clone, Copy)]
struct Row {
    verb: Verb,
    path: &'static str,
    /// The valid body (a JSON object template); `None` sends no body.
    body: Option<&'static str>,
    /// The body's fields; bad input is derived from them.
    fields: &'static [Field],
    /// Every field is optional but one is needed: `{}` is a 400.
    at_least_one: bool,
    actor: Who,
    status: u16,
    /// The exact happy body (a JSON template), where it is fixed.
    reply: Option<&'static str>,
    denied: &'static [Denial],
    probes: &'static [Probe],
    needs: &'static [Need],
    /// What a capped field over its cap gets.
    over_cap: (u16, &'static str),
    /// The first frame the owner's socket gets from the happy call.
    event: Option<&'static str>,
}

/// The defaults rows are written against: a POST by the owner answering
/// 200, no body, nothing to refuse or probe.
const ROW: Row = Row {
    verb: Verb::Post,
    path: "",
    body: None,
    fields: &[],
    at_least_one: false,
    actor: Who::Owner,
    status: 200,
    reply: None,
    denied: &[],
    probes: &[],
    needs: &[],
    over_cap: (400, "invalid_request"),
    event: None,
};

const ACK: Option<&str> = Some(r#"{"accepted":true}"#);
/// The auth routes answer a malformed credential with 401 (PROTOCOL.md §2.2).
const BAD_CREDENTIALS: (u16, &str) = (401, "invalid_credentials");
/// 👍, percent-encoded for the path.
const EMOJI: &str = "%F0%9F%91%8D";
/// Where the victim of the IP-ban rows joined from.
const VICTIM_IP: &str = "198.51.100.7";

// --- the table --------------------------------------------------------------------

const AUTH_ROWS: &[Row] = &[
    Row {
        path: "/auth/register",
        body: Some(r#"{"username":"{fresh}","password":"{password}"}"#),
        fields: &[
            req("username", Kind::Text(Some(32))),
            req("password", Kind::Text(Some(128))),
            // Ignored without hCaptcha, so no cap to check, but typed.
            opt("captcha_token", Kind::Text(None)),
        ],
        actor: Who::Anonymous,
        reply: ACK,
        probes: &[Probe::Login],
        ..ROW
    },
    Row {
        path: "/auth/login",
        body: Some(r#"{"username":"{target_name}","password":"{password}"}"#),
        fields: &[
            req("username", Kind::Text(Some(32))),
            req("password", Kind::Text(Some(128))),
        ],
        actor: Who::Anonymous,
        over_cap: BAD_CREDENTIALS,
        ..ROW
    },
    // Sessions have no read route: the happy call, made last with the same
    // refresh token, is what shows that no refused call rotated or revoked
    // it (a rotated token is a replay, which revokes the session).
    Row {
        path: "/auth/refresh",
        body: Some(r#"{"refresh_token":"{refresh}"}"#),
        fields: &[req("refresh_token", Kind::Text(Some(512)))],
        actor: Who::Anonymous,
        over_cap: BAD_CREDENTIALS,
        ..ROW
    },
    Row {
        path: "/auth/logout",
        body: Some(r#"{"refresh_token":"{refresh}"}"#),
        fields: &[req("refresh_token", Kind::Text(Some(512)))],
        actor: Who::Anonymous,
        status: 204,
        over_cap: BAD_CREDENTIALS,
        ..ROW
    },
];

/// The two diagnostics of PROTOCOL.md §2.1, without auth.
const SYSTEM_ROWS: &[Row] = &[
    Row {
        path: "/echo",
        body: Some(r#"{"message":"hello"}"#),
        fields: &[req("message", Kind::Text(None))],
        actor: Who::Anonymous,
        reply: Some(r#"{"message":"hello"}"#),
        ..ROW
    },
    Row {
        verb: Verb::Get,
        path: "/slow",
        actor: Who::Anonymous,
        reply: Some(r#"{"status":"ok"}"#),
        ..ROW
    },
];

const SOCIAL_ROWS: &[Row] = &[
    Row {
        verb: Verb::Patch,
        path: "/users/me/profile",
        body: Some(r#"{"username":"{fresh}","about_markdown":"hello **world**"}"#),
        fields: &[
            opt("username", Kind::Text(Some(32))),
            opt("about_markdown", Kind::Text(Some(2048))),
        ],
        at_least_one: true,
        denied: SIGNED_IN,
        probes: &[PROFILE],
        event: Some("profile_update"),
        ..ROW
    },
    Row {
        path: "/users/lookup",
        body: Some(r#"{"user_ids":["{member}"]}"#),
        fields: &[req("user_ids", Kind::List(Some(64)))],
        denied: SIGNED_IN,
        ..ROW
    },
    Row {
        path: "/friends/requests",
        body: Some(r#"{"recipient_user_id":"{outsider}"}"#),
        fields: &[req("recipient_user_id", ID)],
        denied: SIGNED_IN,
        probes: &[FRIEND_REQUESTS],
        event: Some("friend_request_create"),
        ..ROW
    },
    Row {
        path: "/friends/requests/{req}/accept",
        reply: ACK,
        denied: &[NO_TOKEN, MEMBER_NOT_FOUND],
        probes: &[FRIEND_REQUESTS, FRIENDS],
        needs: &[Need::FriendRequest],
        event: Some("friend_request_update"),
        ..ROW
    },
    Row {
        verb: Verb::Delete,
        path: "/friends/requests/{req}",
        status: 204,
        denied: &[NO_TOKEN, MEMBER_NOT_FOUND],
        probes: &[FRIEND_REQUESTS],
        needs: &[Need::FriendRequest],
        event: Some("friend_request_delete"),
        ..ROW
    },
    Row {
        verb: Verb::Delete,
        path: "/friends/{member}",
        status: 204,
        denied: SIGNED_IN,
        probes: &[FRIENDS],
        needs: &[Need::Friends],
        event: Some("friend_remove"),
        ..ROW
    },
];

const GUILD_ROWS: &[Row] = &[
    Row {
        path: "/guilds",
        body: Some(r#"{"name":"Second Guild","visibility":"public"}"#),
        fields: &[
            req("name", Kind::Text(Some(64))),
            opt("visibility", Kind::Text(None)),
        ],
        denied: SIGNED_IN,
        probes: &[GUILDS],
        ..ROW
    },
    Row {
        verb: Verb::Patch,
        path: "/guilds/{g}",
        body: Some(r#"{"name":"Renamed Guild","visibility":"private"}"#),
        fields: &[
            opt("name", Kind::Text(Some(64))),
            opt("visibility", Kind::Text(None)),
        ],
        at_least_one: true,
        denied: STAFF_ONLY,
        probes: &[GUILDS],
        event: Some("workspace_update"),
        ..ROW
    },
    // A refused join is audited by design (`directory.join.rejected.*`), so
    // the audit log is not among the probes.
    Row {
        path: "/guilds/{g}/join",
        actor: Who::Outsider,
        reply: Some(r#"{"guild_id":"{g}","outcome":"accepted"}"#),
        denied: &[NO_TOKEN, BANNED_JOIN],
        probes: &[MEMBERS],
        needs: &[Need::Banned],
        event: Some("workspace_member_add"),
        ..ROW
    },
    Row {
        path: "/guilds/{g}/members/{outsider}",
        reply: ACK,
        denied: STAFF_ONLY,
        probes: &[MEMBERS],
        event: Some("workspace_member_add"),
        ..ROW
    },
    Row {
        verb: Verb::Patch,
        path: "/guilds/{g}/members/{target}",
        body: Some(r#"{"role":"moderator"}"#),
        fields: &[req("role", Kind::Text(None))],
        reply: ACK,
        denied: STAFF_ONLY,
        probes: &[MEMBERS, AUDIT],
        event: Some("workspace_member_update"),
        ..ROW
    },
    Row {
        path: "/guilds/{g}/members/{target}/kick",
        reply: ACK,
        denied: STAFF_ONLY,
        probes: &[MEMBERS, AUDIT],
        event: Some("workspace_member_remove"),
        ..ROW
    },
    Row {
        path: "/guilds/{g}/members/{target}/ban",
        reply: ACK,
        denied: STAFF_ONLY,
        probes: &[MEMBERS, AUDIT],
        event: Some("workspace_member_ban"),
        ..ROW
    },
    Row {
        path: "/guilds/{g}/ip-bans/by-user",
        body: Some(r#"{"target_user_id":"{victim}","reason":"spam","expires_in_secs":3600}"#),
        fields: &[
            req("target_user_id", ID),
            opt("reason", Kind::Text(Some(240))),
            opt("expires_in_secs", Kind::Int(Some(15_552_000))),
        ],
        denied: STAFF_ONLY,
        probes: &[IP_BANS, AUDIT],
        needs: &[Need::Victim],
        event: Some("workspace_ip_ban_sync"),
        ..ROW
    },
    Row {
        verb: Verb::Delete,
        path: "/guilds/{g}/ip-bans/{ban}",
        reply: ACK,
        denied: STAFF_ONLY,
        probes: &[IP_BANS, AUDIT],
        needs: &[Need::IpBan],
        event: Some("workspace_ip_ban_sync"),
        ..ROW
    },
];

/// The body of both override routes: no permission in both lists.
const OVERRIDE: &str = r#"{"allow":["publish_video"],"deny":["subscribe_streams"]}"#;
const OVERRIDE_FIELDS: &[Field] = &[
    req("allow", Kind::List(None)),
    req("deny", Kind::List(None)),
];

/// Roles, assignments and channel permission overrides (PROTOCOL.md §2.8, §2.9).
const ROLE_ROWS: &[Row] = &[
    Row {
        path: "/guilds/{g}/roles",
        body: Some(
            r##"{"name":"helpers two","permissions":["create_message","delete_message"],"position":5,"color_hex":"#00AAFF"}"##,
        ),
        fields: &[
            req("name", Kind::Text(Some(32))),
            req("permissions", Kind::List(None)),
            opt("position", Kind::Int(None)),
            opt("color_hex", Kind::NullableText(Some(7))),
        ],
        denied: STAFF_ONLY,
        probes: &[ROLES, AUDIT],
        event: Some("workspace_role_create"),
        ..ROW
    },
    Row {
        verb: Verb::Patch,
        path: "/guilds/{g}/roles/{r}",
        body: Some(
            r##"{"name":"renamed","permissions":["create_message","publish_video"],"color_hex":"#112233"}"##,
        ),
        fields: &[
            opt("name", Kind::Text(Some(32))),
            opt("permissions", Kind::List(None)),
            opt("color_hex", Kind::NullableText(Some(7))),
        ],
        at_least_one: true,
        denied: STAFF_ONLY,
        probes: &[ROLES, AUDIT],
        event: Some("workspace_role_update"),
        ..ROW
    },
    Row {
        verb: Verb::Delete,
        path: "/guilds/{g}/roles/{r}",
        reply: ACK,
        denied: STAFF_ONLY,
        probes: &[ROLES, AUDIT],
        event: Some("workspace_role_delete"),
        ..ROW
    },
    Row {
        path: "/guilds/{g}/roles/reorder",
        body: Some(r#"{"role_ids":["{r}"]}"#),
        fields: &[req("role_ids", Kind::List(Some(64)))],
        reply: ACK,
        denied: STAFF_ONLY,
        probes: &[ROLES, AUDIT],
        event: Some("workspace_role_reorder"),
        ..ROW
    },
    // `role_id`: present, but may be null (PROTOCOL.md §2.8).
    Row {
        path: "/guilds/{g}/roles/default",
        body: Some(r#"{"role_id":"{r}"}"#),
        fields: &[req("role_id", Kind::NullableText(Some(26)))],
        reply: ACK,
        denied: STAFF_ONLY,
        probes: &[ROLES, AUDIT],
        ..ROW
    },
    Row {
        path: "/guilds/{g}/roles/{r}/members/{target}",
        reply: ACK,
        denied: STAFF_ONLY,
        probes: &[MEMBERS, AUDIT],
        event: Some("workspace_role_assignment_add"),
        ..ROW
    },
    Row {
        verb: Verb::Delete,
        path: "/guilds/{g}/roles/{r}/members/{target}",
        reply: ACK,
        denied: STAFF_ONLY,
        probes: &[MEMBERS, AUDIT],
        needs: &[Need::Assigned],
        event: Some("workspace_role_assignment_remove"),
        ..ROW
    },
    Row {
        path: "/guilds/{g}/channels/{c}/overrides/member",
        body: Some(OVERRIDE),
        fields: OVERRIDE_FIELDS,
        reply: ACK,
        denied: STAFF_ONLY,
        probes: &[MEMBER_PERMISSIONS, AUDIT],
        event: Some("workspace_channel_role_override_update"),
        ..ROW
    },
    Row {
        path: "/guilds/{g}/channels/{c}/permission-overrides/member/{member}",
        body: Some(OVERRIDE),
        fields: OVERRIDE_FIELDS,
        reply: ACK,
        denied: STAFF_ONLY,
        probes: &[MEMBER_PERMISSIONS, AUDIT],
        event: Some("workspace_channel_permission_override_update"),
        ..ROW
    },
    Row {
        path: "/guilds/{g}/channels/{c}/permission-overrides/role/{r}",
        body: Some(OVERRIDE),
        fields: OVERRIDE_FIELDS,
        reply: ACK,
        denied: STAFF_ONLY,
        probes: &[TARGET_PERMISSIONS, AUDIT],
        needs: &[Need::Assigned],
        event: Some("workspace_channel_permission_override_update"),
        ..ROW
    },
];

/// Channels, messages, reactions, attachments, search maintenance
/// (PROTOCOL.md §2.10, §2.11, §2.12, §2.13).
const CHANNEL_ROWS: &[Row] = &[
    Row {
        path: "/guilds/{g}/channels",
        body: Some(r#"{"name":"lounge two","kind":"voice"}"#),
        fields: &[
            req("name", Kind::Text(Some(64))),
            opt("kind", Kind::Text(None)),
        ],
        denied: STAFF_ONLY,
        probes: &[CHANNELS],
        event: Some("channel_create"),
        ..ROW
    },
    // Additions (PROTOCOL.md §7.5): renaming and deleting a channel.
    Row {
        verb: Verb::Patch,
        path: "/guilds/{g}/channels/{c}",
        body: Some(r#"{"name":"renamed"}"#),
        fields: &[opt("name", Kind::Text(Some(64)))],
        at_least_one: true,
        denied: STAFF_ONLY,
        probes: &[CHANNELS],
        event: Some("channel_update"),
        ..ROW
    },
    Row {
        verb: Verb::Delete,
        path: "/guilds/{g}/channels/{c}",
        status: 204,
        denied: STAFF_ONLY,
        probes: &[CHANNELS],
        event: Some("channel_delete"),
        ..ROW
    },
    Row {
        path: "/guilds/{g}/channels/{c}/messages",
        body: Some(r#"{"content":"hello **there**","attachment_ids":[]}"#),
        fields: &[
            req("content", Kind::Text(Some(2000))),
            opt("attachment_ids", Kind::List(Some(5))),
        ],
        denied: MEMBERS_ONLY,
        probes: &[MESSAGES],
        event: Some("message_create"),
        ..ROW
    },
    // `{m}` is the owner's: a plain member is neither its author nor holds
    // `delete_message`.
    Row {
        verb: Verb::Patch,
        path: "/guilds/{g}/channels/{c}/messages/{m}",
        body: Some(r#"{"content":"edited"}"#),
        fields: &[req("content", Kind::Text(Some(2000)))],
        denied: STAFF_ONLY,
        probes: &[MESSAGES],
        event: Some("message_update"),
        ..ROW
    },
    Row {
        verb: Verb::Delete,
        path: "/guilds/{g}/channels/{c}/messages/{m}",
        status: 204,
        denied: STAFF_ONLY,
        probes: &[MESSAGES],
        event: Some("message_delete"),
        ..ROW
    },
    Row {
        path: "/guilds/{g}/channels/{c}/messages/{m}/reactions/{emoji}",
        denied: MEMBERS_ONLY,
        probes: &[MESSAGES],
        event: Some("message_reaction"),
        ..ROW
    },
    Row {
        verb: Verb::Delete,
        path: "/guilds/{g}/channels/{c}/messages/{m}/reactions/{emoji}",
        denied: MEMBERS_ONLY,
        probes: &[MESSAGES],
        needs: &[Need::Reaction],
        event: Some("message_reaction"),
        ..ROW
    },
    Row {
        verb: Verb::Delete,
        path: "/guilds/{g}/channels/{c}/attachments/{a}",
        status: 204,
        denied: &[NO_TOKEN, MEMBER_NOT_FOUND, OUTSIDER_FORBIDDEN],
        probes: &[ATTACHMENT],
        needs: &[Need::Attachment],
        ..ROW
    },
    Row {
        path: "/guilds/{g}/search/rebuild",
        status: 204,
        denied: STAFF_ONLY,
        ..ROW
    },
    Row {
        path: "/guilds/{g}/search/reconcile",
        denied: STAFF_ONLY,
        ..ROW
    },
];

/// PROTOCOL.md §2.14. Leave and state need no permission beyond the IP gate: an
/// outsider's call is a no-op 204, not a refusal.
const VOICE_ROWS: &[Row] = &[
    Row {
        path: "/guilds/{g}/channels/{v}/voice/token",
        body: Some(r#"{"can_publish":true,"can_subscribe":true,"publish_sources":["microphone"]}"#),
        fields: &[
            opt("can_publish", Kind::Bool),
            opt("can_subscribe", Kind::Bool),
            opt("publish_sources", Kind::List(None)),
        ],
        actor: Who::Target,
        denied: MEMBERS_ONLY,
        probes: &[Probe::VoiceRoster],
        needs: &[Need::Voice],
        event: Some("voice_participant_join"),
        ..ROW
    },
    Row {
        path: "/guilds/{g}/channels/{v}/voice/state",
        body: Some(r#"{"is_muted":true,"is_deafened":true}"#),
        fields: &[opt("is_muted", Kind::Bool), opt("is_deafened", Kind::Bool)],
        at_least_one: true,
        actor: Who::Member,
        status: 204,
        denied: SIGNED_IN,
        probes: &[Probe::VoiceRoster],
        needs: &[Need::Voice],
        event: Some("voice_participant_update"),
        ..ROW
    },
    Row {
        path: "/guilds/{g}/channels/{v}/voice/leave",
        actor: Who::Member,
        status: 204,
        denied: SIGNED_IN,
        probes: &[Probe::VoiceRoster],
        needs: &[Need::Voice],
        event: Some("voice_stream_unpublish"),
        ..ROW
    },
];

const ALL_ROWS: &[&[Row]] = &[
    AUTH_ROWS,
    SYSTEM_ROWS,
    SOCIAL_ROWS,
    GUILD_ROWS,
    ROLE_ROWS,
    CHANNEL_ROWS,
    VOICE_ROWS,
];

// --- the reference server's route list ------------------------------------------------------

/// Every REST route the reference server has (PROTOCOL.md §2), and the
/// gateway upgrade, with `{g}`-style placeholders.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/auth/register"),
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
    ("POST", "/auth/logout"),
    ("GET", "/auth/me"),
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("POST", "/echo"),
    ("GET", "/slow"),
    ("PATCH", "/users/me/profile"),
    ("GET", "/users/{u}/profile"),
    ("POST", "/users/lookup"),
    ("POST", "/users/me/profile/avatar"),
    ("POST", "/users/me/profile/banner"),
    ("GET", "/users/{u}/avatar"),
    ("GET", "/users/{u}/banner"),
    ("GET", "/friends"),
    ("POST", "/friends/requests"),
    ("GET", "/friends/requests"),
    ("POST", "/friends/requests/{id}/accept"),
    ("DELETE", "/friends/requests/{id}"),
    ("DELETE", "/friends/{u}"),
    ("POST", "/guilds"),
    ("GET", "/guilds"),
    ("PATCH", "/guilds/{g}"),
    ("GET", "/guilds/public"),
    ("POST", "/guilds/{g}/join"),
    ("GET", "/guilds/{g}/members"),
    ("POST", "/guilds/{g}/members/{u}"),
    ("PATCH", "/guilds/{g}/members/{u}"),
    ("POST", "/guilds/{g}/members/{u}/kick"),
    ("POST", "/guilds/{g}/members/{u}/ban"),
    ("GET", "/guilds/{g}/audit"),
    ("GET", "/guilds/{g}/ip-bans"),
    ("POST", "/guilds/{g}/ip-bans/by-user"),
    ("DELETE", "/guilds/{g}/ip-bans/{id}"),
    ("GET", "/guilds/{g}/roles"),
    ("POST", "/guilds/{g}/roles"),
    ("PATCH", "/guilds/{g}/roles/{r}"),
    ("DELETE", "/guilds/{g}/roles/{r}"),
    ("POST", "/guilds/{g}/roles/reorder"),
    ("POST", "/guilds/{g}/roles/default"),
    ("POST", "/guilds/{g}/roles/{r}/members/{u}"),
    ("DELETE", "/guilds/{g}/roles/{r}/members/{u}"),
    ("POST", "/guilds/{g}/channels/{c}/overrides/{role}"),
    (
        "POST",
        "/guilds/{g}/channels/{c}/permission-overrides/{target_kind}/{target_id}",
    ),
    ("POST", "/guilds/{g}/channels"),
    ("GET", "/guilds/{g}/channels"),
    ("GET", "/guilds/{g}/channels/{c}/permissions/self"),
    ("GET", "/guilds/{g}/channels/{c}/messages"),
    ("POST", "/guilds/{g}/channels/{c}/messages"),
    ("PATCH", "/guilds/{g}/channels/{c}/messages/{m}"),
    ("DELETE", "/guilds/{g}/channels/{c}/messages/{m}"),
    (
        "POST",
        "/guilds/{g}/channels/{c}/messages/{m}/reactions/{emoji}",
    ),
    (
        "DELETE",
        "/guilds/{g}/channels/{c}/messages/{m}/reactions/{emoji}",
    ),
    ("POST", "/guilds/{g}/channels/{c}/attachments"),
    ("GET", "/guilds/{g}/channels/{c}/attachments/{a}"),
    ("DELETE", "/guilds/{g}/channels/{c}/attachments/{a}"),
    ("GET", "/guilds/{g}/search"),
    ("POST", "/guilds/{g}/search/rebuild"),
    ("POST", "/guilds/{g}/search/reconcile"),
    ("POST", "/guilds/{g}/channels/{c}/voice/token"),
    ("POST", "/guilds/{g}/channels/{c}/voice/leave"),
    ("POST", "/guilds/{g}/channels/{c}/voice/state"),
    ("GET", "/gateway/ws"),
];

/// Routes the product adds (PROTOCOL.md §7.5); rows cover them too.
const EXTENSIONS: &[(&str, &str)] = &[
    ("PATCH", "/guilds/{g}/channels/{c}"),
    ("DELETE", "/guilds/{g}/channels/{c}"),
];

/// Reference routes without a row: raw-body uploads and reads, each with the
/// tests (`file::function`) that cover it.
const COVERED_ELSEWHERE: &[(&str, &str, &[&str])] = &[
    (
        "GET",
        "/auth/me",
        &["bad_input.rs::auth_failures_are_documented_and_write_nothing"],
    ),
    (
        "GET",
        "/health",
        &["message_flow.rs::the_public_origin_serves_rest_and_the_gateway"],
    ),
    // Served only on the admin listeners, never the public port, by design
    // (docs/ARCHITECTURE.md, "Metrics").
    (
        "GET",
        "/metrics",
        &["gateway_security.rs::metrics_are_served_only_on_the_admin_listeners"],
    ),
    (
        "GET",
        "/users/{u}/profile",
        &[
            "social.rs::profile_edit_read_and_lookup",
            "social.rs::profile_bad_input_is_refused_and_writes_nothing",
        ],
    ),
    (
        "POST",
        "/users/me/profile/avatar",
        &[
            "social.rs::images_upload_and_serve",
            "social.rs::image_bad_input_is_refused_and_writes_nothing",
        ],
    ),
    (
        "POST",
        "/users/me/profile/banner",
        &[
            "social.rs::images_upload_and_serve",
            "social.rs::image_bad_input_is_refused_and_writes_nothing",
        ],
    ),
    (
        "GET",
        "/users/{u}/avatar",
        &["social.rs::images_upload_and_serve"],
    ),
    (
        "GET",
        "/users/{u}/banner",
        &["social.rs::images_upload_and_serve"],
    ),
    ("GET", "/friends", &["social.rs::friend_routes"]),
    ("GET", "/friends/requests", &["social.rs::friend_routes"]),
    (
        "GET",
        "/guilds",
        &["moderation.rs::ban_tears_down_every_socket_of_the_banned_user"],
    ),
    (
        "GET",
        "/guilds/public",
        &["moderation.rs::the_directory_lists_public_guilds_and_joins_them"],
    ),
    (
        "GET",
        "/guilds/{g}/members",
        &["moderation.rs::the_member_list_pages_by_user_id_with_role_ids"],
    ),
    (
        "GET",
        "/guilds/{g}/audit",
        &["moderation.rs::the_audit_log_needs_view_audit_log_and_pages_newest_first"],
    ),
    (
        "GET",
        "/guilds/{g}/ip-bans",
        &["moderation.rs::ip_bans_by_user"],
    ),
    (
        "GET",
        "/guilds/{g}/roles",
        &["roles.rs::role_routes_refuse_callers_without_permission_or_rank"],
    ),
    (
        "GET",
        "/guilds/{g}/channels",
        &["roles.rs::channel_rename_delete_list_and_own_permissions"],
    ),
    (
        "GET",
        "/guilds/{g}/channels/{c}/permissions/self",
        &["roles.rs::channel_rename_delete_list_and_own_permissions"],
    ),
    (
        "GET",
        "/guilds/{g}/channels/{c}/messages",
        &["message_flow.rs::message_reaches_members_on_both_gateways_and_nobody_else"],
    ),
    (
        "POST",
        "/guilds/{g}/channels/{c}/attachments",
        &[
            "messages.rs::attachments_travel_with_their_message",
            "messages.rs::bad_uploads_leave_nothing_behind",
        ],
    ),
    (
        "GET",
        "/guilds/{g}/channels/{c}/attachments/{a}",
        &["messages.rs::attachment_downloads_and_deletes_are_guarded"],
    ),
    (
        "GET",
        "/guilds/{g}/search",
        &[
            "search.rs::search_follows_creates_edits_and_deletes",
            "search.rs::every_cap_and_malformed_query_is_refused",
        ],
    ),
    (
        "GET",
        "/gateway/ws",
        &[
            "gateway_security.rs::bad_tokens_are_refused_before_the_upgrade",
            "message_flow.rs::message_reaches_members_on_both_gateways_and_nobody_else",
        ],
    ),
];

/// The sources of the test files named in [`COVERED_ELSEWHERE`].
const TEST_SOURCES: &[(&str, &str)] = &[
    ("bad_input.rs", include_str!("bad_input.rs")),
    ("gateway_security.rs", include_str!("gateway_security.rs")),
    ("message_flow.rs", include_str!("message_flow.rs")),
    ("messages.rs", include_str!("messages.rs")),
    ("moderation.rs", include_str!("moderation.rs")),
    ("roles.rs", include_str!("roles.rs")),
    ("search.rs", include_str!("search.rs")),
    ("social.rs", include_str!("social.rs")),
];

/// Whether a concrete template (`/friends/{member}`) is an instance of a
/// reference route (`/friends/{u}`): a placeholder in the route takes any
/// segment, a literal only itself.
fn instance_of(template: &str, route: &str) -> bool {
    let (ours, theirs): (Vec<_>, Vec<_>) =
        (template.split('/').collect(), route.split('/').collect());
    ours.len() == theirs.len()
        && ours
            .iter()
            .zip(&theirs)
            .all(|(ours, theirs)| theirs.starts_with('{') || ours == theirs)
}

#[test]
fn the_table_covers_every_contract_route() {
    let rows: Vec<&Row> = ALL_ROWS.iter().flat_map(|group| group.iter()).collect();
    let mut problems = Vec::new();
    if ROUTES.len() != 65 {
        let listed = ROUTES.len();
        problems.push(format!(
            "{listed} routes listed; the reference server has 64 and /gateway/ws"
        ));
    }
    for &(verb, route) in ROUTES {
        let rows_here = rows
            .iter()
            .filter(|row| row.verb.name() == verb && instance_of(row.path, route))
            .count();
        let notes: Vec<&[&str]> = COVERED_ELSEWHERE
            .iter()
            .filter(|(v, r, _)| *v == verb && *r == route)
            .map(|(_, _, tests)| *tests)
            .collect();
        match (rows_here, notes.as_slice()) {
            (0, []) => problems.push(format!("{verb} {route}: no row and no covering test")),
            (0, [tests]) => {
                for test in *tests {
                    let (file, function) = test.split_once("::").expect("file::function");
                    let source = TEST_SOURCES
                        .iter()
                        .find(|(name, _)| *name == file)
                        .map(|(_, source)| *source);
                    if !source.is_some_and(|s| s.contains(&format!("fn {function}("))) {
                        problems.push(format!("{verb} {route}: {test} does not exist"));
                    }
                }
            }
            (_, []) => {}
            _ => problems.push(format!("{verb} {route}: a row and a note, or two notes")),
        }
    }
    // Every row is one route of the reference server or of the known extensions.
    for row in &rows {
        let routes = ROUTES
            .iter()
            .chain(EXTENSIONS)
            .filter(|(verb, route)| row.verb.name() == *verb && instance_of(row.path, route))
            .count();
        if routes != 1 {
            problems.push(format!(
                "row {} {} matches {routes} routes",
                row.verb.name(),
                row.path
            ));
        }
    }
    for (verb, route, _) in COVERED_ELSEWHERE {
        if !ROUTES.contains(&(*verb, *route)) {
            problems.push(format!(
                "note for {verb} {route}, which is no contract route"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The api's OpenAPI document lists exactly the api's routes of the table
/// (the reference server's and the extensions), plus the tooling ones; `/metrics`
/// (the admin listener) and `/gateway/ws` (the gateway) are not the api's.
#[test]
fn the_openapi_document_lists_exactly_the_routes_of_the_table() {
    const NOT_THE_API: &[&str] = &["/metrics", "/gateway/ws"];
    const TOOLING: &[(&str, &str)] = &[
        ("GET", "/openapi.json"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    ];
    let document = serde_json::to_value(filament_api::openapi_document()).expect("serializes");
    let documented: Vec<(String, String)> = document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("path item").keys();
            methods.map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let expected: Vec<&(&str, &str)> = ROUTES
        .iter()
        .chain(EXTENSIONS)
        .chain(TOOLING)
        .filter(|(_, route)| !NOT_THE_API.contains(route))
        .collect();
    let mut problems = Vec::new();
    for (verb, route) in &expected {
        let found = documented
            .iter()
            .filter(|(method, path)| method == verb && same_shape(path, route))
            .count();
        if found != 1 {
            problems.push(format!("{verb} {route}: documented {found} times"));
        }
    }
    for (method, path) in &documented {
        if !expected
            .iter()
            .any(|(verb, route)| method == verb && same_shape(path, route))
        {
            problems.push(format!("{method} {path}: documented, not in the table"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Whether two templates name the same route: placeholders (whatever
/// their names) where the other has placeholders, literals equal.
fn same_shape(left: &str, right: &str) -> bool {
    let placeholder = |segment: &str| segment.starts_with('{');
    let (left, right): (Vec<_>, Vec<_>) = (left.split('/').collect(), right.split('/').collect());
    left.len() == right.len()
        && left
            .iter()
            .zip(&right)
            .all(|(l, r)| (placeholder(l) && placeholder(r)) || l == r)
}

// --- running a row ----------------------------------------------------------------

/// Mismatches found so far: a run reports all of them at the end.
#[derive(Debug, Default)]
struct Findings(Vec<String>);

impl Findings {
    fn expect(&mut self, label: &str, got: (u16, &Value), want: (u16, &Value)) {
        if got != want {
            self.0.push(format!(
                "{label}: got {} {}, want {} {}",
                got.0, got.1, want.0, want.1
            ));
        }
    }

    fn note(&mut self, finding: String) {
        self.0.push(finding);
    }

    fn assert_none(mut self) {
        let findings = std::mem::take(&mut self.0);
        assert!(
            findings.is_empty(),
            "{} mismatch(es) with the contract:\n{}",
            findings.len(),
            findings.join("\n")
        );
    }
}

/// A panic part way (a setup call failing, a sentinel that never came)
/// still shows what was found before it.
impl Drop for Findings {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.0.is_empty() {
            eprintln!("found before the panic:\n{}", self.0.join("\n"));
        }
    }
}

/// What a call sends.
#[derive(Debug, Clone)]
enum Payload {
    Nothing,
    Json(Value),
    /// Not JSON at all.
    Raw(&'static str),
}

/// One way of breaking the valid body.
#[derive(Debug, Clone, Copy)]
enum Mutation {
    UnknownField,
    Missing(Field),
    NoField,
    WrongType(Field),
    OverCap(Field),
    Malformed,
}

impl Mutation {
    /// Every mutation of a row's body, each with a label.
    fn all(row: &Row) -> Vec<(String, Self)> {
        if row.body.is_none() {
            return Vec::new();
        }
        let mut all = vec![("an unknown field".to_owned(), Self::UnknownField)];
        for field in row.fields {
            if field.required {
                all.push((format!("`{}` missing", field.name), Self::Missing(*field)));
            }
        }
        if row.at_least_one {
            all.push(("no field at all".to_owned(), Self::NoField));
        }
        for field in row.fields {
            all.push((
                format!("`{}` of the wrong type", field.name),
                Self::WrongType(*field),
            ));
            if field.kind.over_cap().is_some() {
                all.push((
                    format!("`{}` over its cap", field.name),
                    Self::OverCap(*field),
                ));
            }
        }
        all.push(("malformed JSON".to_owned(), Self::Malformed));
        all
    }

    /// The broken body, and the status and error it must get.
    fn apply(self, row: &Row, valid: &Value) -> (Payload, (u16, &'static str)) {
        const SHAPE: (u16, &str) = (422, "invalid_request");
        const INVALID: (u16, &str) = (400, "invalid_request");
        let mut body = valid.as_object().expect("bodies are objects").clone();
        let expected = match self {
            Self::UnknownField => {
                body.insert("unexpected_field".to_owned(), json!(true));
                SHAPE
            }
            Self::Missing(field) => {
                body.remove(field.name);
                SHAPE
            }
            Self::NoField => {
                body.clear();
                INVALID
            }
            Self::WrongType(field) => {
                body.insert(field.name.to_owned(), field.kind.wrong_type());
                SHAPE
            }
            Self::OverCap(field) => {
                let value = field.kind.over_cap().expect("only capped fields");
                body.insert(field.name.to_owned(), value);
                row.over_cap
            }
            Self::Malformed => return (Payload::Raw(r#"{"unterminated"#), INVALID),
        };
        (Payload::Json(Value::Object(body)), expected)
    }
}

/// One refused call of a row, before its valid body is made.
#[derive(Debug, Clone)]
enum Attempt {
    /// The actor sends a broken body.
    Mutated(Mutation),
    /// The actor sends the valid body to this path template, whose most
    /// specific id is malformed.
    MalformedId(String),
    /// Someone without the permission sends the valid body.
    Denied(Denial),
}

impl Attempt {
    /// Every refused call of a row, each with a label.
    fn all(row: &Row) -> Vec<(String, Self)> {
        let mutations = Mutation::all(row)
            .into_iter()
            .map(|(case, mutation)| (case, Self::Mutated(mutation)));
        let malformed = malformed_id(row.path).map(|template| {
            (
                "a malformed path id".to_owned(),
                Self::MalformedId(template),
            )
        });
        let denied = row
            .denied
            .iter()
            .map(|denial| (format!("as {:?}", denial.who), Self::Denied(*denial)));
        mutations.chain(malformed).chain(denied).collect()
    }
}

/// The path template with its last id, the most specific one, malformed;
/// `None` if it has no id.
fn malformed_id(template: &str) -> Option<String> {
    let mut segments: Vec<&str> = template.split('/').collect();
    let last_id = segments
        .iter()
        .rposition(|s| s.starts_with('{') && *s != "{emoji}")?;
    segments[last_id] = "not-a-ulid";
    Some(segments.join("/"))
}

/// A refused call: what is sent by whom, and what must come back.
struct Refused<'a> {
    label: String,
    who: Who,
    path: String,
    payload: Payload,
    /// The valid body of this attempt, which the login probe reads.
    valid: &'a Value,
    expected: (u16, &'static str),
}

/// The suite makes thousands of calls from one address: the limits that
/// count them are raised out of the way. Loopback is trusted as a proxy so
/// the victim's join can come from an address of its own.
fn roomy(config: &mut StackConfig) {
    config.tune_api = |api| {
        api.rate_limit_per_minute = 1_000_000;
        api.max_created_guilds_per_user = 1_000;
        api.directory_join_per_minute_per_ip = 100_000;
        api.directory_join_per_minute_per_user = 100_000;
        api.trusted_proxy_cidrs = vec!["127.0.0.0/8".parse().expect("network")];
    };
    config.tune_gateway = |gateway| gateway.handshakes_per_ip_per_minute = 100_000;
}

/// Checks every row of a group on one stack.
async fn check_rows(backends: Backends, rows: &[Row]) {
    let Some(t) = TestStack::start_with(backends, 1, roomy).await else {
        return;
    };
    let mut findings = Findings::default();
    for row in rows {
        check_row(&t, row, &mut findings).await;
    }
    t.stack.stop().await.expect("clean shutdown");
    findings.assert_none();
}

async fn check_row(t: &TestStack, row: &Row, findings: &mut Findings) {
    let mut world = World::new(t, row.needs).await;
    let route = format!("{} {}", row.verb.name(), row.path);
    for (case, attempt) in Attempt::all(row) {
        let valid = world.body(row);
        let (who, template, payload, expected) = match attempt {
            Attempt::Mutated(mutation) => {
                let (payload, expected) = mutation.apply(row, &valid);
                (row.actor, row.path.to_owned(), payload, expected)
            }
            Attempt::MalformedId(template) => {
                let expected = (400, "invalid_request");
                (row.actor, template, world.payload(&valid), expected)
            }
            Attempt::Denied(denial) => {
                let expected = (denial.status, denial.error);
                (
                    denial.who,
                    row.path.to_owned(),
                    world.payload(&valid),
                    expected,
                )
            }
        };
        let call = Refused {
            label: format!("{route}: {case}"),
            who,
            path: world.fill(&template),
            payload,
            valid: &valid,
            expected,
        };
        world.refused(t, row, call, findings).await;
    }
    world.happy(t, row, &route, findings).await;
}

/// A fresh guild and everything a row may need in it; see [`Need`].
/// Setup ends before the sockets connect, so they start out quiet.
struct World {
    owner: User,
    member: User,
    target: User,
    outsider: User,
    banned: Option<User>,
    victim: Option<User>,
    guild: String,
    text: String,
    voice: String,
    message: String,
    role: String,
    friend_request: Option<String>,
    ip_ban: Option<String>,
    attachment: Option<String>,
    /// The owner's socket first, then the member's.
    sockets: Vec<Socket>,
    /// The owner is in voice: the sentinel includes a voice event.
    in_voice: bool,
    /// The owner's mute state, which the voice sentinel flips.
    muted: bool,
}

impl World {
    async fn new(t: &TestStack, needs: &[Need]) -> Self {
        let (owner, member, target, outsider) = (
            t.user("owner").await,
            t.user("member").await,
            t.user("target").await,
            t.user("outsider").await,
        );
        let (guild, text) = t.guild_with_channel(&owner, "public").await;
        let g = format!("/guilds/{guild}");
        let voice = id_of(
            setup(
                t,
                &owner,
                Verb::Post,
                &format!("{g}/channels"),
                json!({"name": "lounge", "kind": "voice"}),
            )
            .await,
            "channel_id",
        );
        for user in [&member, &target] {
            setup(
                t,
                &owner,
                Verb::Post,
                &format!("{g}/members/{}", user.id),
                Value::Null,
            )
            .await;
        }
        let messages = format!("{g}/channels/{text}/messages");
        let message = id_of(
            setup(
                t,
                &owner,
                Verb::Post,
                &messages,
                json!({"content": "first"}),
            )
            .await,
            "message_id",
        );
        let role = id_of(
            setup(
                t,
                &owner,
                Verb::Post,
                &format!("{g}/roles"),
                json!({"name": "helpers", "permissions": ["create_message"]}),
            )
            .await,
            "role_id",
        );
        let friend_request = if needs.contains(&Need::FriendRequest) {
            Some(request_friendship(t, &target, &owner).await)
        } else {
            None
        };
        if needs.contains(&Need::Friends) {
            let request = request_friendship(t, &member, &owner).await;
            let accept = format!("/friends/requests/{request}/accept");
            setup(t, &owner, Verb::Post, &accept, Value::Null).await;
        }
        let victim = if needs.contains(&Need::Victim) || needs.contains(&Need::IpBan) {
            let victim = t.user("victim").await;
            let response = t
                .http
                .post(t.api(&format!("{g}/join")))
                .bearer_auth(&victim.token)
                .header("x-forwarded-for", VICTIM_IP)
                .send()
                .await
                .expect("join sent");
            assert_eq!(response.status(), 200, "the victim joins");
            Some(victim)
        } else {
            None
        };
        let ip_ban = match (&victim, needs.contains(&Need::IpBan)) {
            (Some(victim), true) => {
                let body = json!({"target_user_id": victim.id});
                let created =
                    setup(t, &owner, Verb::Post, &format!("{g}/ip-bans/by-user"), body).await;
                Some(created["ban_ids"][0].as_str().expect("a ban").to_owned())
            }
            _ => None,
        };
        let banned = if needs.contains(&Need::Banned) {
            let banned = t.user("banned").await;
            setup(
                t,
                &owner,
                Verb::Post,
                &format!("{g}/members/{}/ban", banned.id),
                Value::Null,
            )
            .await;
            Some(banned)
        } else {
            None
        };
        if needs.contains(&Need::Assigned) {
            let assign = format!("{g}/roles/{role}/members/{}", target.id);
            setup(t, &owner, Verb::Post, &assign, Value::Null).await;
        }
        if needs.contains(&Need::Reaction) {
            let react = format!("{messages}/{message}/reactions/{EMOJI}");
            setup(t, &owner, Verb::Post, &react, Value::Null).await;
        }
        let attachment = if needs.contains(&Need::Attachment) {
            Some(upload_png(t, &owner, &format!("{g}/channels/{text}/attachments")).await)
        } else {
            None
        };
        let in_voice = needs.contains(&Need::Voice);
        if in_voice {
            for user in [&owner, &member] {
                let token = format!("{g}/channels/{voice}/voice/token");
                setup(t, user, Verb::Post, &token, json!({})).await;
            }
        }
        let mut sockets = Vec::new();
        for user in [&owner, &member] {
            let mut socket = t.connect(0, user).await;
            socket.subscribed(&guild, &text).await;
            if in_voice {
                socket.subscribed(&guild, &voice).await;
            }
            sockets.push(socket);
        }
        Self {
            owner,
            member,
            target,
            outsider,
            banned,
            victim,
            guild,
            text,
            voice,
            message,
            role,
            friend_request,
            ip_ban,
            attachment,
            sockets,
            in_voice,
            muted: false,
        }
    }

    fn user(&self, who: Who) -> Option<&User> {
        match who {
            Who::Anonymous => None,
            Who::Owner => Some(&self.owner),
            Who::Member => Some(&self.member),
            Who::Target => Some(&self.target),
            Who::Outsider => Some(&self.outsider),
            Who::Banned => Some(self.banned.as_ref().expect("the row needs Need::Banned")),
        }
    }

    fn token(&self, who: Who) -> Option<&str> {
        self.user(who).map(|user| user.token.as_str())
    }

    /// The placeholders of path and body templates. `{fresh}` is a new
    /// username at each call.
    fn vars(&self) -> Vec<(&'static str, String)> {
        let fresh = format!("fresh_{}", &ulid::Ulid::generate().to_string()[16..]).to_lowercase();
        let mut vars = vec![
            ("{g}", self.guild.clone()),
            ("{c}", self.text.clone()),
            ("{v}", self.voice.clone()),
            ("{m}", self.message.clone()),
            ("{r}", self.role.clone()),
            ("{emoji}", EMOJI.to_owned()),
            ("{owner}", self.owner.id.clone()),
            ("{member}", self.member.id.clone()),
            ("{target}", self.target.id.clone()),
            ("{outsider}", self.outsider.id.clone()),
            ("{target_name}", self.target.username.clone()),
            ("{refresh}", self.target.refresh_token.clone()),
            ("{password}", PASSWORD.to_owned()),
            ("{fresh}", fresh),
        ];
        let optional = [
            ("{victim}", self.victim.as_ref().map(|v| v.id.clone())),
            ("{req}", self.friend_request.clone()),
            ("{ban}", self.ip_ban.clone()),
            ("{a}", self.attachment.clone()),
        ];
        vars.extend(
            optional
                .into_iter()
                .filter_map(|(key, value)| Some((key, value?))),
        );
        vars
    }

    fn fill(&self, template: &str) -> String {
        let filled = self
            .vars()
            .iter()
            .fold(template.to_owned(), |filled, (key, value)| {
                filled.replace(key, value)
            });
        if let Some(left) = placeholder(&filled) {
            panic!("{template}: nothing in this world for {left}; is a Need missing?");
        }
        filled
    }

    /// The row's valid body for one attempt (`Null` for a body-less row).
    fn body(&self, row: &Row) -> Value {
        row.body.map_or(Value::Null, |template| {
            serde_json::from_str(&self.fill(template)).expect("the table's bodies are JSON")
        })
    }

    fn payload(&self, valid: &Value) -> Payload {
        match valid {
            Value::Null => Payload::Nothing,
            body => Payload::Json(body.clone()),
        }
    }

    async fn send(
        &self,
        t: &TestStack,
        row: &Row,
        who: Who,
        path: &str,
        payload: Payload,
    ) -> (u16, Value) {
        let (method, token) = (row.verb.method(), self.token(who));
        match payload {
            Payload::Nothing => t.call(method, path, token, None).await,
            Payload::Json(body) => t.call(method, path, token, Some(body)).await,
            Payload::Raw(raw) => t.call_raw(method, path, token, raw.to_owned()).await,
        }
    }

    /// A refused call: its answer, then proof that it wrote nothing.
    async fn refused(
        &mut self,
        t: &TestStack,
        row: &Row,
        call: Refused<'_>,
        findings: &mut Findings,
    ) {
        let before = self.snapshot(t, row, call.valid).await;
        let (status, body) = self.send(t, row, call.who, &call.path, call.payload).await;
        let (want_status, want_error) = call.expected;
        findings.expect(
            &call.label,
            (status, &body),
            (want_status, &json!({ "error": want_error })),
        );
        let after = self.snapshot(t, row, call.valid).await;
        if before != after {
            findings.note(format!(
                "{}: wrote something:\n  before {}\n  after  {}",
                call.label,
                Value::Array(before),
                Value::Array(after)
            ));
        }
        self.sentinel(t, &call.label, findings).await;
    }

    /// The happy call, last: it must succeed, change what the probes see,
    /// and announce itself.
    async fn happy(&mut self, t: &TestStack, row: &Row, route: &str, findings: &mut Findings) {
        let label = format!("{route}: the happy path");
        let valid = self.body(row);
        let before = self.snapshot(t, row, &valid).await;
        let path = self.fill(row.path);
        let (status, body) = self
            .send(t, row, row.actor, &path, self.payload(&valid))
            .await;
        let expected_body = match (row.status, row.reply) {
            (204, _) => Some(Value::Null),
            (_, Some(reply)) => Some(serde_json::from_str(&self.fill(reply)).expect("reply JSON")),
            (_, None) => None,
        };
        let want_body = expected_body.as_ref().unwrap_or(&body);
        findings.expect(&label, (status, &body), (row.status, want_body));
        if status != row.status {
            return;
        }
        let after = self.snapshot(t, row, &valid).await;
        if !row.probes.is_empty() && before == after {
            findings.note(format!(
                "{label}: the probes saw no change, so they cannot show that refused calls wrote nothing"
            ));
        }
        if let Some(event) = row.event {
            // Within the socket's own deadline, so a missing event is a
            // finding rather than a panic that loses the others.
            let next = self.sockets[0].next_event();
            match tokio::time::timeout(support::DEADLINE / 2, next).await {
                Ok(frame) if frame["t"] == event => {}
                Ok(frame) => findings.note(format!("{label}: first event {frame}, want {event}")),
                Err(_) => findings.note(format!("{label}: no event, want {event}")),
            }
        }
    }

    /// What the row's probes see now.
    async fn snapshot(&self, t: &TestStack, row: &Row, valid: &Value) -> Vec<Value> {
        let mut seen = Vec::with_capacity(row.probes.len());
        for probe in row.probes {
            seen.push(match *probe {
                Probe::Get(path, who) => {
                    let (status, body) = t.get(&self.fill(path), self.token(who)).await;
                    json!([path, status, body])
                }
                Probe::Login => {
                    let credentials =
                        json!({"username": valid["username"], "password": valid["password"]});
                    let (status, _) = t.post("/auth/login", None, credentials).await;
                    json!(["login", status])
                }
                Probe::VoiceRoster => json!(["voice roster", self.voice_roster(t).await]),
            });
        }
        seen
    }

    /// The roster a new socket of the owner's is told on subscribing to the
    /// voice channel. The owner's other socket keeps the owner present.
    async fn voice_roster(&self, t: &TestStack) -> Value {
        let mut socket = t.connect(0, &self.owner).await;
        socket.subscribe(&self.guild, &self.voice).await;
        loop {
            let frame = socket.next_event().await;
            if frame["t"] == "voice_participant_sync" {
                return frame["d"]["participants"].clone();
            }
        }
    }

    /// Proves that no event went out since the last sentinel: a message
    /// (and, with voice, a mute toggle of the owner's) must be the next
    /// frames on every socket.
    async fn sentinel(&mut self, t: &TestStack, after: &str, findings: &mut Findings) {
        let messages = format!("/guilds/{}/channels/{}/messages", self.guild, self.text);
        let posted = setup(
            t,
            &self.member,
            Verb::Post,
            &messages,
            json!({"content": "sentinel"}),
        )
        .await;
        let mut expected = vec![json!({"t": "message_create", "message_id": posted["message_id"]})];
        if self.in_voice {
            self.muted = !self.muted;
            let state = format!("/guilds/{}/channels/{}/voice/state", self.guild, self.voice);
            setup(
                t,
                &self.owner,
                Verb::Post,
                &state,
                json!({"is_muted": self.muted}),
            )
            .await;
            expected.push(json!({"t": "voice_participant_update", "user_id": self.owner.id, "is_muted": self.muted}));
        }
        for socket in &mut self.sockets {
            let mut pending = expected.clone();
            while !pending.is_empty() {
                let frame = socket.next_event().await;
                let seen = sentinel_key(&frame);
                match pending.iter().position(|p| *p == seen) {
                    Some(found) => {
                        pending.remove(found);
                    }
                    None => findings.note(format!("{after}: an event went out: {frame}")),
                }
            }
        }
    }
}

/// The parts of a frame that identify a sentinel.
fn sentinel_key(frame: &Value) -> Value {
    let d = &frame["d"];
    match frame["t"].as_str() {
        Some("message_create") => json!({"t": "message_create", "message_id": d["message_id"]}),
        Some("voice_participant_update") => json!({
            "t": "voice_participant_update",
            "user_id": d["user_id"],
            "is_muted": d["updated_fields"]["is_muted"],
        }),
        _ => frame.clone(),
    }
}

/// The first `{name}` placeholder left in a filled template, if any.
fn placeholder(filled: &str) -> Option<&str> {
    let start = filled.find('{')?;
    let rest = &filled[start..];
    let end = rest.find('}')?;
    let name = &rest[1..end];
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        Some(&rest[..=end])
    } else {
        placeholder(&rest[1..])
    }
}

// --- setup helpers ----------------------------------------------------------------

/// A setup call that must succeed; returns its body.
async fn setup(t: &TestStack, user: &User, verb: Verb, path: &str, body: Value) -> Value {
    let body = (!body.is_null()).then_some(body);
    let (status, reply) = t.call(verb.method(), path, Some(&user.token), body).await;
    assert!(
        (200..300).contains(&status),
        "setup {} {path}: {status} {reply}",
        verb.name()
    );
    reply
}

fn id_of(created: Value, key: &str) -> String {
    created[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {created}"))
        .to_owned()
}

async fn request_friendship(t: &TestStack, from: &User, to: &User) -> String {
    let body = json!({"recipient_user_id": to.id});
    id_of(
        setup(t, from, Verb::Post, "/friends/requests", body).await,
        "request_id",
    )
}

/// Uploads a small PNG (as far as sniffing goes); returns its id.
async fn upload_png(t: &TestStack, owner: &User, attachments: &str) -> String {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(b"route table upload");
    let response = t
        .http
        .post(t.api(&format!("{attachments}?filename=pixel.png")))
        .bearer_auth(&owner.token)
        .body(png)
        .send()
        .await
        .expect("upload sent");
    assert_eq!(response.status(), 200, "the upload is accepted");
    let body: Value = response.json().await.expect("attachment JSON");
    id_of(body, "attachment_id")
}

// --- the tests ----------------------------------------------------------------------

/// Each group of rows, on SQLite with the in-memory registry and on
/// Postgres with Redis.
macro_rules! route_tests {
    ($($group:ident: $rows:expr;)*) => {$(
        mod $group {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                check_rows(Backends::Embedded, $rows).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_redis() {
                check_rows(Backends::External, $rows).await;
            }
        }
    )*};
}

route_tests! {
    auth_routes: AUTH_ROWS;
    system_routes: SYSTEM_ROWS;
    profile_and_friend_routes: SOCIAL_ROWS;
    guild_member_and_moderation_routes: GUILD_ROWS;
    role_and_override_routes: ROLE_ROWS;
    channel_message_and_search_routes: CHANNEL_ROWS;
    voice_routes: VOICE_ROWS;
}
