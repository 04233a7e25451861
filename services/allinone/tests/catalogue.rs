//! The event catalogue (issue 4): one table row per `(event_type, emitter)`
//! pair of the event manifest, docs/events.json, each saying how to trigger
//! the emitter, which sockets must receive the event (with its key fields)
//! and which must not. [`the_table_is_exactly_the_manifest`] fails when
//! proto gains an event or an emitter without a row, or loses one that
//! still has a row.
//!
//! ## The scene
//! One stack with two gateways, built once and shared by the rows. Each
//! row leaves it as it found it (what a row adds, it removes again, or it
//! adds something no later row can notice, like a role or a member without
//! a socket). The sockets, spread over both gateways:
//!
//! | socket | person | gateway | subscribed in the main guild |
//! |---|---|---|---|
//! | `O`  | the owner            | 0 | `general`, the voice channel, `private` |
//! | `M1` | a member             | 1 | `general`, the voice channel (`private` is refused) |
//! | `M2` | the same member      | 0 | `general` |
//! | `X`  | an outsider          | 1 | nothing (`general` is refused) |
//! | `F`  | the owner's friend   | 1 | nothing; shares no guild with the owner |
//! | `Probe` | whoever a row needs | either | a socket a row opens and closes itself |
//!
//! `private` is hidden from plain members by the legacy override the web
//! client uses. Channel events therefore reach `O`, `M1`, `M2` (`general`),
//! `O`, `M1` (voice) or `O` alone (`private`); guild events reach the three.
//!
//! ## Exact deliveries
//! Every action of a row, its setup and cleanup included, is a step that
//! names every frame it causes, for every socket. After a step the runner
//! reads, on each socket, exactly the announced frames (in any order: they
//! may come from different services), and any other frame fails the row.
//! Every frame must also be of a type the manifest knows, and every
//! `(type, emitter)` a step announces must be a row of the table: the table
//! is checked against the product, and the manifest against the table.
//! An action may set off a service trigger besides its own emitter (a kick
//! is also an `access revocation`); its effect then says which frames each
//! one caused.
//!
//! ## Proving absence
//! Nothing sleeps. After each step every person gets a sentinel from each
//! service the step's events came from (from all three after a row's
//! action, and again when the row is done): a later event addressed to that
//! person alone, which each of their sockets must receive next. Events of
//! one service reach a gateway on one ordered stream, so an event the step
//! wrongly sent to a socket would have arrived before that service's
//! sentinel. Each person owns a small guild for this, with a text channel,
//! a voice channel and a lobby that all their sockets are subscribed to,
//! and two helper users who have no socket of their own in the scene:
//! - api: the person posts in their text channel (`message_create`);
//! - voice: the voice helper, in the voice channel since the start,
//!   toggles its mute (`voice_participant_update`);
//! - presence: the presence helper opens a socket and subscribes to the
//!   lobby, or closes it (`presence_update` online or offline).
//!
//! Connection events (`ready`, `subscribed`, `presence_sync`, `resumed`,
//! `pong`) are queued by the gateway before the socket that caused them
//! reads them, so the api sentinel that follows proves them absent
//! elsewhere too. A `Probe` socket
//! has no sentinels: its frames are checked exactly while it lives, and a
//! stray frame after its last step would go unnoticed.
//!
//! Rows that cannot run on this scene say why and name the test that
//! covers them; [`rows_covered_elsewhere_name_tests_that_exist`] checks
//! that those tests exist.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::{Backends, Socket, TestStack, User};

// --- emitters, spelled as in the manifest -----------------------------------

const CONNECT: &str = "GET /gateway/ws";
const SUBSCRIBE: &str = "gateway subscribe";
const RESUME: &str = "gateway resume";
const PING: &str = "gateway ping";
const DISCONNECT: &str = "gateway disconnect";
const SEND_OVER_SOCKET: &str = "gateway message_create";
const POST_MESSAGE: &str = "POST /guilds/{g}/channels/{c}/messages";
const EDIT_MESSAGE: &str = "PATCH /guilds/{g}/channels/{c}/messages/{m}";
const DELETE_MESSAGE: &str = "DELETE /guilds/{g}/channels/{c}/messages/{m}";
const REACT: &str = "POST /guilds/{g}/channels/{c}/messages/{m}/reactions/{emoji}";
const UNREACT: &str = "DELETE /guilds/{g}/channels/{c}/messages/{m}/reactions/{emoji}";
const CREATE_CHANNEL: &str = "POST /guilds/{g}/channels";
const RENAME_CHANNEL: &str = "PATCH /guilds/{g}/channels/{c}";
const DELETE_CHANNEL: &str = "DELETE /guilds/{g}/channels/{c}";
const UPDATE_GUILD: &str = "PATCH /guilds/{g}";
const JOIN: &str = "POST /guilds/{g}/join";
const ADD_MEMBER: &str = "POST /guilds/{g}/members/{u}";
const SET_MEMBER_ROLE: &str = "PATCH /guilds/{g}/members/{u}";
const KICK: &str = "POST /guilds/{g}/members/{u}/kick";
const BAN: &str = "POST /guilds/{g}/members/{u}/ban";
const CREATE_ROLE: &str = "POST /guilds/{g}/roles";
const UPDATE_ROLE: &str = "PATCH /guilds/{g}/roles/{r}";
const DELETE_ROLE: &str = "DELETE /guilds/{g}/roles/{r}";
const REORDER_ROLES: &str = "POST /guilds/{g}/roles/reorder";
const ASSIGN_ROLE: &str = "POST /guilds/{g}/roles/{r}/members/{u}";
const UNASSIGN_ROLE: &str = "DELETE /guilds/{g}/roles/{r}/members/{u}";
const LEGACY_OVERRIDE: &str = "POST /guilds/{g}/channels/{c}/overrides/{role}";
const TARGETED_OVERRIDE: &str =
    "POST /guilds/{g}/channels/{c}/permission-overrides/{target_kind}/{target_id}";
const BAN_ADDRESSES: &str = "POST /guilds/{g}/ip-bans/by-user";
const LIFT_IP_BAN: &str = "DELETE /guilds/{g}/ip-bans/{id}";
const EDIT_PROFILE: &str = "PATCH /users/me/profile";
const UPLOAD_AVATAR: &str = "POST /users/me/profile/avatar";
const UPLOAD_BANNER: &str = "POST /users/me/profile/banner";
const REQUEST_FRIEND: &str = "POST /friends/requests";
const ACCEPT_FRIEND: &str = "POST /friends/requests/{id}/accept";
const DELETE_FRIEND_REQUEST: &str = "DELETE /friends/requests/{id}";
const UNFRIEND: &str = "DELETE /friends/{u}";
const VOICE_TOKEN: &str = "POST /guilds/{g}/channels/{c}/voice/token";
const VOICE_LEAVE: &str = "POST /guilds/{g}/channels/{c}/voice/leave";
const VOICE_STATE: &str = "POST /guilds/{g}/channels/{c}/voice/state";
const VOICE_EXPIRY: &str = "voice expiry";
/// A kick, ban, role or override change that takes away what a socket or a
/// voice participant was allowed; set off by the REST call that made it.
const REVOCATION: &str = "access revocation";
const LIVEKIT_WEBHOOK: &str = "LiveKit webhook";
const LIVEKIT_DRIFT: &str = "LiveKit drift check";

// --- the table ----------------------------------------------------------------

/// A socket of the scene (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    O,
    M1,
    M2,
    X,
    F,
    /// The socket a row opened itself, while it lives.
    Probe,
}

use Who::{F, M1, M2, O, Probe, X};

/// Present in the main guild, and subscribed to `general`.
const GUILD: &[Who] = &[O, M1, M2];
const OUTSIDE: &[Who] = &[X, F];
/// Subscribed to the main guild's voice channel.
const VOICE: &[Who] = &[O, M1];
const NOT_VOICE: &[Who] = &[M2, X, F];
const OWNER_ONLY: &[Who] = &[O];
const NOT_OWNER: &[Who] = &[M1, M2, X, F];
const EVERYONE: &[Who] = &[O, M1, M2, X, F];
const GUILD_AND_PROBE: &[Who] = &[O, M1, M2, Probe];
/// The owner's profile audience: themselves, their friend, and the main
/// guild.
const PROFILE: &[Who] = &[O, M1, M2, F];
const FRIEND_PARTIES: &[Who] = &[X, F];
/// The member's first socket, which answers for itself: connection events
/// a scene socket asked for.
const M1_ONLY: &[Who] = &[M1];
const NOT_M1: &[Who] = &[O, M2, X, F];

type Action<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;
/// Performs a row's steps on the scene; exactly one of them is the row's
/// action ([`Scene::act`]).
type Trigger = for<'a> fn(&'a mut Scene) -> Action<'a>;

struct Row {
    event: &'static str,
    emitter: &'static str,
    cover: Cover,
}

struct Check {
    trigger: Trigger,
    /// The sockets that must receive the row's event from its action.
    to: &'static [Who],
    /// The sockets that must not; with `to`, every socket at the action.
    not: &'static [Who],
}

enum Cover {
    /// Run on the shared scene by `every_row_reaches_exactly_its_audience`.
    Scene(Check),
    /// Run on a scene of its own by the named test in this file.
    Alone(&'static str, Check),
    /// Covered by the named tests (file, function), for the reason given.
    Elsewhere {
        why: &'static str,
        tests: &'static [(&'static str, &'static str)],
    },
}

const fn scene(
    event: &'static str,
    emitter: &'static str,
    trigger: Trigger,
    to: &'static [Who],
    not: &'static [Who],
) -> Row {
    Row {
        event,
        emitter,
        cover: Cover::Scene(Check { trigger, to, not }),
    }
}

const THIS_FILE: &str = "services/allinone/tests/catalogue.rs";

/// Voice expiry runs on a stack of its own.
const EXPIRY_WHY: &str = "needs a participant TTL of a second; the scene keeps its voice \
                          sentinels in voice for the default 300 s";
const EXPIRY_TESTS: &[(&str, &str)] = &[
    (THIS_FILE, "voice_participants_expire_end_to_end"),
    (
        "services/voice/src/roster.rs",
        "participants_expire_after_their_ttl_unless_renewed",
    ),
    (
        "services/voice/src/service.rs",
        "the_pruner_removes_silent_participants_after_their_ttl",
    ),
];

/// LiveKit's side runs against a LiveKit: a signed webhook, or its server
/// API for the drift check; the voice service's own tests play it.
const LIVEKIT_WHY: &str = "needs LiveKit: a signed webhook or its server API, which the voice \
                           service's tests play";
const WEBHOOK_TESTS: &[(&str, &str)] = &[(
    "services/voice/tests/grpc.rs",
    "verified_webhooks_update_the_observed_roster",
)];
const DRIFT_TESTS: &[(&str, &str)] = &[
    (
        "services/voice/src/drift.rs",
        "one_check_corrects_both_sides",
    ),
    (
        "services/voice/src/roster.rs",
        "reconcile_follows_livekit_but_spares_fresh_tokens",
    ),
];

const fn alone(
    event: &'static str,
    emitter: &'static str,
    trigger: Trigger,
    to: &'static [Who],
    not: &'static [Who],
    test: &'static str,
) -> Row {
    Row {
        event,
        emitter,
        cover: Cover::Alone(test, Check { trigger, to, not }),
    }
}

const fn elsewhere(
    event: &'static str,
    emitter: &'static str,
    why: &'static str,
    tests: &'static [(&'static str, &'static str)],
) -> Row {
    Row {
        event,
        emitter,
        cover: Cover::Elsewhere { why, tests },
    }
}

/// One row per `(event_type, emitter)` of docs/events.json: the event, its
/// emitter, the trigger, who must receive it and who must not.
#[rustfmt::skip]
static ROWS: &[Row] = &[
    scene("ready", CONNECT, open_a_socket, &[Probe], EVERYONE),
    scene("subscribed", SUBSCRIBE, subscribe_a_second_socket, &[Probe], EVERYONE),
    scene("presence_sync", SUBSCRIBE, subscribe_a_second_socket, &[Probe], EVERYONE),
    scene("presence_update", SUBSCRIBE, visitor_comes_online, GUILD_AND_PROBE, OUTSIDE),
    scene("presence_update", DISCONNECT, visitor_in_voice_disconnects, GUILD, OUTSIDE),
    // Not to the kicked visitor's socket (the probe), which hears only
    // the removal.
    scene("presence_update", REVOCATION, visitor_is_kicked, GUILD, &[X, F, Probe]),
    scene("resumed", RESUME, member_resumes_without_positions, M1_ONLY, NOT_M1),
    scene("pong", PING, member_pings, M1_ONLY, NOT_M1),
    scene("message_create", POST_MESSAGE, member_posts, GUILD, OUTSIDE),
    // Alone: a gateway that refuses the frame closes the socket, and the
    // failure then says so without hiding the other rows' results.
    alone("message_create", SEND_OVER_SOCKET, member_posts_over_the_socket, GUILD_AND_PROBE, OUTSIDE,
          "gateway_message_create_reaches_the_channel"),
    scene("message_update", EDIT_MESSAGE, owner_edits_in_private, OWNER_ONLY, NOT_OWNER),
    scene("message_delete", DELETE_MESSAGE, owner_deletes_a_members_message, GUILD, OUTSIDE),
    scene("message_reaction", REACT, member_reacts, GUILD, OUTSIDE),
    scene("message_reaction", UNREACT, member_unreacts, GUILD, OUTSIDE),
    scene("channel_create", CREATE_CHANNEL, owner_creates_a_channel, GUILD, OUTSIDE),
    scene("channel_update", RENAME_CHANNEL, owner_renames_private, OWNER_ONLY, NOT_OWNER),
    scene("channel_delete", DELETE_CHANNEL, owner_deletes_a_subscribed_channel, VOICE, NOT_VOICE),
    scene("workspace_update", UPDATE_GUILD, owner_renames_the_guild, GUILD, OUTSIDE),
    scene("workspace_member_add", JOIN, newcomer_joins, GUILD, OUTSIDE),
    scene("workspace_member_add", ADD_MEMBER, owner_adds_a_member, GUILD, OUTSIDE),
    scene("workspace_member_update", SET_MEMBER_ROLE, owner_promotes_a_member, GUILD, OUTSIDE),
    scene("workspace_member_remove", KICK, owner_kicks, GUILD_AND_PROBE, OUTSIDE),
    scene("workspace_member_remove", BAN, owner_bans, GUILD_AND_PROBE, OUTSIDE),
    scene("workspace_member_ban", BAN, owner_bans, GUILD, &[X, F, Probe]),
    scene("workspace_role_create", CREATE_ROLE, owner_creates_a_role, GUILD, OUTSIDE),
    scene("workspace_role_update", UPDATE_ROLE, owner_renames_a_role, GUILD, OUTSIDE),
    scene("workspace_role_delete", DELETE_ROLE, owner_deletes_a_role, GUILD, OUTSIDE),
    scene("workspace_role_reorder", REORDER_ROLES, owner_reorders_roles, GUILD, OUTSIDE),
    scene("workspace_role_assignment_add", ASSIGN_ROLE, owner_assigns_a_role, GUILD, OUTSIDE),
    scene("workspace_role_assignment_remove", UNASSIGN_ROLE, owner_unassigns_a_role, GUILD, OUTSIDE),
    scene("workspace_channel_role_override_update", LEGACY_OVERRIDE, owner_overrides_a_legacy_role, GUILD, OUTSIDE),
    scene("workspace_channel_permission_override_update", TARGETED_OVERRIDE, owner_overrides_for_a_member, GUILD, OUTSIDE),
    scene("workspace_ip_ban_sync", BAN_ADDRESSES, owner_bans_addresses, OWNER_ONLY, NOT_OWNER),
    scene("workspace_ip_ban_sync", LIFT_IP_BAN, owner_lifts_an_ip_ban, OWNER_ONLY, NOT_OWNER),
    scene("profile_update", EDIT_PROFILE, owner_edits_their_profile, PROFILE, &[X]),
    scene("profile_avatar_update", UPLOAD_AVATAR, owner_uploads_an_avatar, PROFILE, &[X]),
    scene("profile_banner_update", UPLOAD_BANNER, owner_uploads_a_banner, PROFILE, &[X]),
    scene("friend_request_create", REQUEST_FRIEND, outsider_asks_the_friend, FRIEND_PARTIES, GUILD),
    scene("friend_request_update", ACCEPT_FRIEND, friend_accepts, FRIEND_PARTIES, GUILD),
    scene("friend_request_delete", DELETE_FRIEND_REQUEST, friend_declines, FRIEND_PARTIES, GUILD),
    scene("friend_remove", UNFRIEND, outsider_unfriends, FRIEND_PARTIES, GUILD),
    scene("voice_participant_sync", SUBSCRIBE, subscribe_while_the_owner_is_in_voice, &[Probe], EVERYONE),
    // All the joining user's sockets: M2 is not subscribed to the voice
    // channel and still gets its roster.
    scene("voice_participant_sync", VOICE_TOKEN, member_joins_voice, &[M1, M2], &[O, X, F]),
    scene("voice_participant_join", VOICE_TOKEN, member_joins_voice, VOICE, NOT_VOICE),
    scene("voice_participant_leave", VOICE_LEAVE, owner_leaves_voice, VOICE, NOT_VOICE),
    elsewhere("voice_participant_leave", VOICE_EXPIRY, EXPIRY_WHY, EXPIRY_TESTS),
    scene("voice_participant_leave", DISCONNECT, visitor_in_voice_disconnects, VOICE, NOT_VOICE),
    scene("voice_participant_leave", REVOCATION, member_loses_subscribe_streams, VOICE, NOT_VOICE),
    scene("voice_participant_leave", VOICE_TOKEN, owner_moves_to_another_voice_channel, VOICE, NOT_VOICE),
    elsewhere("voice_participant_leave", LIVEKIT_WEBHOOK, LIVEKIT_WHY, WEBHOOK_TESTS),
    elsewhere("voice_participant_leave", LIVEKIT_DRIFT, LIVEKIT_WHY, DRIFT_TESTS),
    scene("voice_participant_update", VOICE_STATE, owner_mutes, VOICE, NOT_VOICE),
    scene("voice_participant_update", VOICE_TOKEN, owner_turns_the_camera_on, VOICE, NOT_VOICE),
    elsewhere("voice_participant_update", LIVEKIT_WEBHOOK, LIVEKIT_WHY, WEBHOOK_TESTS),
    elsewhere("voice_participant_update", LIVEKIT_DRIFT, LIVEKIT_WHY, DRIFT_TESTS),
    scene("voice_stream_publish", VOICE_TOKEN, member_joins_voice, VOICE, NOT_VOICE),
    elsewhere("voice_stream_publish", LIVEKIT_WEBHOOK, LIVEKIT_WHY, WEBHOOK_TESTS),
    scene("voice_stream_unpublish", VOICE_TOKEN, owner_turns_the_camera_off, VOICE, NOT_VOICE),
    // A leave unpublishes the leaver's streams first (PROTOCOL.md §6.4).
    scene("voice_stream_unpublish", VOICE_LEAVE, owner_leaves_voice, VOICE, NOT_VOICE),
    elsewhere("voice_stream_unpublish", VOICE_EXPIRY, EXPIRY_WHY, EXPIRY_TESTS),
    scene("voice_stream_unpublish", DISCONNECT, visitor_in_voice_disconnects, VOICE, NOT_VOICE),
    scene("voice_stream_unpublish", REVOCATION, member_loses_subscribe_streams, VOICE, NOT_VOICE),
    elsewhere("voice_stream_unpublish", LIVEKIT_WEBHOOK, LIVEKIT_WHY, WEBHOOK_TESTS),
    elsewhere("voice_stream_unpublish", LIVEKIT_DRIFT, LIVEKIT_WHY, DRIFT_TESTS),
];

// --- the manifest ----------------------------------------------------------------

fn manifest() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/events.json");
    let text = std::fs::read_to_string(path).expect("docs/events.json is readable");
    serde_json::from_str(&text).expect("docs/events.json is JSON")
}

fn manifest_events() -> Vec<Value> {
    manifest()["events"]
        .as_array()
        .expect("the manifest lists events")
        .clone()
}

/// Every `(event_type, emitter)` pair of the manifest.
fn manifest_pairs() -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    for event in manifest_events() {
        let t = event["event_type"].as_str().expect("event_type");
        for emitter in event["emitted_by"].as_array().expect("emitted_by") {
            let emitter = emitter.as_str().expect("an emitter is a string");
            pairs.insert((t.to_owned(), emitter.to_owned()));
        }
    }
    pairs
}

fn manifest_types() -> BTreeSet<String> {
    manifest_events()
        .iter()
        .map(|event| event["event_type"].as_str().expect("event_type").to_owned())
        .collect()
}

fn table_pairs() -> BTreeSet<(&'static str, &'static str)> {
    ROWS.iter().map(|row| (row.event, row.emitter)).collect()
}

// --- expected frames -----------------------------------------------------------

/// A key that makes a pattern match an array in any order.
const ANY_ORDER: &str = "$any_order";

fn any_order(items: Vec<Value>) -> Value {
    json!({ ANY_ORDER: items })
}

/// `pattern` matches `actual` when every field it names matches (objects
/// may have more fields); arrays match element by element, or in any order
/// under [`ANY_ORDER`]; anything else must be equal.
fn matches(pattern: &Value, actual: &Value) -> bool {
    match pattern {
        Value::Object(fields) => {
            if let (1, Some(Value::Array(items))) = (fields.len(), fields.get(ANY_ORDER)) {
                return matches_in_any_order(items, actual);
            }
            let Value::Object(actual) = actual else {
                return false;
            };
            fields
                .iter()
                .all(|(key, value)| actual.get(key).is_some_and(|a| matches(value, a)))
        }
        Value::Array(items) => actual.as_array().is_some_and(|actual| {
            actual.len() == items.len() && items.iter().zip(actual).all(|(p, a)| matches(p, a))
        }),
        _ => pattern == actual,
    }
}

fn matches_in_any_order(items: &[Value], actual: &Value) -> bool {
    let Some(actual) = actual.as_array() else {
        return false;
    };
    let mut left: Vec<&Value> = actual.iter().collect();
    actual.len() == items.len()
        && items.iter().all(|pattern| {
            let found = left.iter().position(|a| matches(pattern, a));
            found.map(|i| left.swap_remove(i)).is_some()
        })
}

/// One frame a socket must receive: its type and the fields of `d` that
/// matter.
#[derive(Debug, Clone)]
struct Expected {
    t: &'static str,
    fields: Value,
}

impl Expected {
    fn new(t: &'static str, fields: Value) -> Self {
        Self { t, fields }
    }

    fn matches(&self, frame: &Value) -> bool {
        frame["t"] == self.t && matches(&self.fields, &frame["d"])
    }
}

fn describe(expected: &[Expected]) -> String {
    let list: Vec<String> = expected
        .iter()
        .map(|e| format!("{} {}", e.t, e.fields))
        .collect();
    format!("[{}]", list.join(", "))
}

/// An event and the sockets it must reach.
#[derive(Debug, Clone)]
struct Delivery {
    t: &'static str,
    to: Vec<Who>,
    fields: Value,
    /// The service trigger the action set off to cause it; `None` when the
    /// action's own emitter did.
    trigger: Option<&'static str>,
}

fn deliver(t: &'static str, to: &[Who], fields: Value) -> Delivery {
    Delivery {
        t,
        to: to.to_vec(),
        fields,
        trigger: None,
    }
}

/// Everything one action causes.
#[derive(Debug, Clone)]
struct Effect {
    /// The action's own emitter.
    emitter: &'static str,
    deliveries: Vec<Delivery>,
}

impl Effect {
    fn new(emitter: &'static str, deliveries: Vec<Delivery>) -> Self {
        Self {
            emitter,
            deliveries,
        }
    }

    /// Adds what `caused` delivered, set off by the same action: its
    /// deliveries keep `caused`'s emitter.
    fn and(mut self, caused: Effect) -> Self {
        for mut delivery in caused.deliveries {
            if caused.emitter != self.emitter {
                delivery.trigger.get_or_insert(caused.emitter);
            }
            self.deliveries.push(delivery);
        }
        self
    }

    /// The emitter that caused `delivery`.
    fn emitter_of(&self, delivery: &Delivery) -> &'static str {
        delivery.trigger.unwrap_or(self.emitter)
    }

    /// The services whose streams carried the deliveries (the api at
    /// least: its sentinel also closes connection events).
    fn services(&self) -> BTreeSet<Service> {
        let mut services = BTreeSet::from([Service::Api]);
        services.extend(self.deliveries.iter().map(|d| Service::of(d.t)));
        services
    }
}

/// The services with an event stream to the gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Service {
    Api,
    Voice,
    Presence,
}

impl Service {
    fn all() -> BTreeSet<Self> {
        BTreeSet::from([Self::Api, Self::Voice, Self::Presence])
    }

    /// Which stream an event type travels on; connection events (made by
    /// the gateway itself) count as the api's.
    fn of(t: &str) -> Self {
        if t == "presence_update" {
            Self::Presence
        } else if t.starts_with("voice_") {
            Self::Voice
        } else {
            Self::Api
        }
    }
}

/// Prints what the test was doing if it panics while this lives.
struct Doing(String);

impl Drop for Doing {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("    while: {}", self.0);
        }
    }
}

/// The next frame, which must be of a type the manifest knows.
async fn read(socket: &mut Socket, event_types: &BTreeSet<String>) -> Value {
    let frame = socket.next_event().await;
    let t = frame["t"].as_str().unwrap_or_default();
    assert!(
        event_types.contains(t),
        "a frame whose type is not in docs/events.json: {frame}"
    );
    frame
}

/// Reads until every expected frame came, in any order. Strictly, any
/// other frame fails; otherwise it is skipped.
async fn receive(
    socket: &mut Socket,
    event_types: &BTreeSet<String>,
    who: Who,
    mut expected: Vec<Expected>,
    strict: bool,
) {
    while !expected.is_empty() {
        let _doing = Doing(format!("{who:?} waits for {}", describe(&expected)));
        let frame = read(socket, event_types).await;
        match expected.iter().position(|e| e.matches(&frame)) {
            Some(i) => {
                expected.swap_remove(i);
            }
            None => assert!(
                !strict,
                "{who:?} received a frame nobody announced: {frame}\n    \
                 still expected: {}",
                describe(&expected)
            ),
        }
    }
}

// --- the scene -----------------------------------------------------------------

/// The people of the scene, each with a kit of sentinels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Person {
    Owner,
    Member,
    Outsider,
    Friend,
}

use Person::{Friend, Member, Outsider, Owner};

impl Person {
    const ALL: [Self; 4] = [Owner, Member, Outsider, Friend];

    /// The person's sockets, and the gateway each is on.
    fn sockets(self) -> &'static [(Who, usize)] {
        match self {
            Owner => &[(O, 0)],
            Member => &[(M1, 1), (M2, 0)],
            Outsider => &[(X, 1)],
            Friend => &[(F, 1)],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Owner => "owner",
            Member => "member",
            Outsider => "outsider",
            Friend => "friend",
        }
    }
}

/// A person's own guild and helpers, used only for sentinels.
struct Kit {
    user: User,
    guild: String,
    text: String,
    voice: String,
    lobby: String,
    voice_helper: User,
    muted: bool,
    presence_helper: User,
    helper_socket: Option<Socket>,
    /// Where the presence helper connects: the gateway the person's first
    /// socket is not on.
    helper_gateway: usize,
}

impl Kit {
    async fn new(t: &TestStack, person: Person, user: User) -> Self {
        let (guild, text) = t.guild_with_channel(&user, "private").await;
        let voice =
            create_channel(t, &user, &guild, json!({"name": "ring", "kind": "voice"})).await;
        let lobby = create_channel(t, &user, &guild, json!({"name": "lobby"})).await;
        let voice_helper = t.user("voicehelper").await;
        let presence_helper = t.user("presencehelper").await;
        for helper in [&voice_helper, &presence_helper] {
            let path = format!("/guilds/{guild}/members/{}", helper.id);
            let (status, body) = t.post(&path, Some(&user.token), json!(null)).await;
            assert_eq!(status, 200, "{body}");
        }
        let path = format!("/guilds/{guild}/channels/{voice}/voice/token");
        let listen_only = json!({"can_publish": false, "can_subscribe": true});
        let (status, body) = t.post(&path, Some(&voice_helper.token), listen_only).await;
        assert_eq!(status, 200, "{body}");
        Self {
            user,
            guild,
            text,
            voice,
            lobby,
            voice_helper,
            muted: false,
            presence_helper,
            helper_socket: None,
            helper_gateway: 1 - person.sockets()[0].1,
        }
    }

    /// Sends this person one sentinel per service; returns the frames each
    /// of their sockets must receive.
    async fn send_sentinels(
        &mut self,
        t: &TestStack,
        services: &BTreeSet<Service>,
    ) -> Vec<Expected> {
        let mut frames = Vec::new();
        if services.contains(&Service::Api) {
            let path = format!("/guilds/{}/channels/{}/messages", self.guild, self.text);
            let content = json!({"content": "sentinel"});
            let (status, message) = t.post(&path, Some(&self.user.token), content).await;
            assert_eq!(status, 200, "{message}");
            let fields = json!({"message_id": message["message_id"]});
            frames.push(Expected::new("message_create", fields));
        }
        if services.contains(&Service::Voice) {
            self.muted = !self.muted;
            let path = format!("/guilds/{}/channels/{}/voice/state", self.guild, self.voice);
            let state = json!({"is_muted": self.muted});
            let (status, body) = t.post(&path, Some(&self.voice_helper.token), state).await;
            assert_eq!(status, 204, "{body}");
            let fields = json!({
                "user_id": self.voice_helper.id,
                "updated_fields": {"is_muted": self.muted},
            });
            frames.push(Expected::new("voice_participant_update", fields));
        }
        if services.contains(&Service::Presence) {
            let status = if let Some(socket) = self.helper_socket.take() {
                drop(socket);
                "offline"
            } else {
                let mut socket = t.connect(self.helper_gateway, &self.presence_helper).await;
                socket.subscribe(&self.guild, &self.lobby).await;
                self.helper_socket = Some(socket);
                "online"
            };
            let fields = json!({
                "guild_id": self.guild,
                "user_id": self.presence_helper.id,
                "status": status,
            });
            frames.push(Expected::new("presence_update", fields));
        }
        frames
    }
}

async fn create_channel(t: &TestStack, owner: &User, guild: &str, body: Value) -> String {
    let (status, channel) = t
        .post(
            &format!("/guilds/{guild}/channels"),
            Some(&owner.token),
            body,
        )
        .await;
    assert_eq!(status, 200, "{channel}");
    channel["channel_id"]
        .as_str()
        .expect("channel id")
        .to_owned()
}

/// What a row's action did, for the runner to hold against the row.
struct Recorded {
    effect: Effect,
    sockets: BTreeSet<Who>,
}

struct Scene {
    t: TestStack,
    event_types: BTreeSet<String>,
    pairs: BTreeSet<(&'static str, &'static str)>,
    guild: String,
    general: String,
    voice: String,
    private: String,
    kits: BTreeMap<Person, Kit>,
    sockets: BTreeMap<Who, Socket>,
    action: Option<Recorded>,
}

/// The scene's stack: it believes `X-Forwarded-For` from loopback (so a
/// directory join can come from an address an IP ban then names), and
/// lets the presence sentinels open as many sockets as they need.
fn scene_config(config: &mut filament_allinone::StackConfig) {
    config.tune_api = |api| {
        api.trusted_proxy_cidrs = vec!["127.0.0.0/8".parse().expect("network")];
    };
    config.tune_gateway = |gateway| gateway.handshakes_per_ip_per_minute = 100_000;
}

impl Scene {
    async fn build(backends: Backends) -> Option<Self> {
        let t = TestStack::start_with(backends, 2, scene_config).await?;
        let mut users = BTreeMap::new();
        for person in Person::ALL {
            users.insert(person, t.user(person.name()).await);
        }
        let (owner, member, friend) = (&users[&Owner], &users[&Member], &users[&Friend]);
        let (guild, general) = t.guild_with_channel(owner, "public").await;
        let voice = create_channel(
            &t,
            owner,
            &guild,
            json!({"name": "lounge", "kind": "voice"}),
        )
        .await;
        let private = create_channel(&t, owner, &guild, json!({"name": "staff"})).await;
        // Hidden from plain members, as the web client's override does it.
        let hide = json!({"allow": [], "deny": ["create_message"]});
        let path = format!("/guilds/{guild}/channels/{private}/overrides/member");
        let (status, body) = t.post(&path, Some(&owner.token), hide).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = t
            .post(
                &format!("/guilds/{guild}/join"),
                Some(&member.token),
                json!(null),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, request) = t
            .post(
                "/friends/requests",
                Some(&owner.token),
                json!({"recipient_user_id": friend.id}),
            )
            .await;
        assert_eq!(status, 200, "{request}");
        let accept = format!(
            "/friends/requests/{}/accept",
            request["request_id"].as_str().expect("id")
        );
        let (status, body) = t.post(&accept, Some(&friend.token), json!(null)).await;
        assert_eq!(status, 200, "{body}");

        // What each socket subscribes to in the main guild.
        let main = BTreeMap::from([
            (O, vec![general.clone(), voice.clone(), private.clone()]),
            (M1, vec![general.clone(), voice.clone()]),
            (M2, vec![general.clone()]),
        ]);
        let mut kits = BTreeMap::new();
        for (person, user) in users {
            kits.insert(person, Kit::new(&t, person, user).await);
        }
        let mut scene = Self {
            event_types: manifest_types(),
            pairs: table_pairs(),
            t,
            guild,
            general,
            voice,
            private,
            kits,
            sockets: BTreeMap::new(),
            action: None,
        };
        for person in Person::ALL {
            let kit = &scene.kits[&person];
            let (user, kit_guild) = (kit.user.clone(), kit.guild.clone());
            let kit_channels = [kit.text.clone(), kit.voice.clone()];
            for &(who, gateway) in person.sockets() {
                let socket = scene.t.open(gateway, &user).await;
                scene.sockets.insert(who, socket);
                let ready = Expected::new("ready", json!({"user_id": user.id}));
                scene.receive(who, vec![ready], true).await;
                for channel in &kit_channels {
                    scene.subscribed(who, &kit_guild, channel).await;
                }
                let guild = scene.guild.clone();
                for channel in main.get(&who).into_iter().flatten() {
                    scene.subscribed(who, &guild, channel).await;
                }
            }
        }
        // Whatever the subscribes caused, before the first sentinels.
        scene.sentinels(&Service::all(), false).await;
        scene.sentinels(&Service::all(), true).await;

        // Refused subscribes are ignored: the next frames are those of the
        // allowed subscribe sent after them.
        let (private, general) = (scene.private.clone(), scene.general.clone());
        scene.send_subscribe(M1, &private).await;
        scene.send_subscribe(X, &general).await;
        let mut acks = Vec::new();
        for (who, person) in [(M1, Member), (X, Outsider)] {
            let kit = &scene.kits[&person];
            let (kit_guild, text) = (kit.guild.clone(), kit.text.clone());
            scene
                .sockets
                .get_mut(&who)
                .expect("socket")
                .subscribe(&kit_guild, &text)
                .await;
            acks.extend(subscribe_acks(&[who], &kit_guild, &text, None, None));
        }
        scene.step(Effect::new(SUBSCRIBE, acks)).await;
        Some(scene)
    }

    /// Subscribes during the build and waits for the acknowledgement.
    async fn subscribed(&mut self, who: Who, guild: &str, channel: &str) {
        self.sockets
            .get_mut(&who)
            .expect("socket")
            .subscribe(guild, channel)
            .await;
        let ack = json!({"guild_id": guild, "channel_id": channel});
        let frames = vec![
            Expected::new("subscribed", ack.clone()),
            Expected::new("voice_participant_sync", ack),
        ];
        self.receive(who, frames, false).await;
    }

    async fn receive(&mut self, who: Who, expected: Vec<Expected>, strict: bool) {
        let socket = self.sockets.get_mut(&who).expect("a socket of the scene");
        receive(socket, &self.event_types, who, expected, strict).await;
    }

    /// Sends every person a sentinel from each of `services`, and reads up
    /// to them on every socket of the scene but the probe.
    async fn sentinels(&mut self, services: &BTreeSet<Service>, strict: bool) {
        let _doing = Doing(format!("sentinels of {services:?}"));
        let mut expected = BTreeMap::new();
        for person in Person::ALL {
            let kit = self.kits.get_mut(&person).expect("kit");
            let frames = kit.send_sentinels(&self.t, services).await;
            for &(who, _) in person.sockets() {
                expected.insert(who, frames.clone());
            }
        }
        for (who, frames) in expected {
            self.receive(who, frames, strict).await;
        }
    }

    /// Checks that `effect` is exactly what every socket receives, then
    /// proves with sentinels that nothing else came.
    async fn step(&mut self, effect: Effect) {
        self.deliveries(&effect).await;
        self.sentinels(&effect.services(), true).await;
    }

    /// [`step`](Self::step) for the row's action, with sentinels from every
    /// service; the runner then holds it against the row.
    async fn act(&mut self, effect: Effect) {
        assert!(self.action.is_none(), "a row has one action");
        self.deliveries(&effect).await;
        self.sentinels(&Service::all(), true).await;
        self.action = Some(Recorded {
            effect,
            sockets: self.sockets.keys().copied().collect(),
        });
    }

    async fn deliveries(&mut self, effect: &Effect) {
        let _doing = Doing(format!("the effect of {}", effect.emitter));
        let mut expected: BTreeMap<Who, Vec<Expected>> = BTreeMap::new();
        for delivery in &effect.deliveries {
            let emitter = effect.emitter_of(delivery);
            assert!(
                self.pairs.contains(&(delivery.t, emitter)),
                "{} from `{emitter}` is not a row of the table",
                delivery.t,
            );
            for who in &delivery.to {
                assert!(self.sockets.contains_key(who), "no socket {who:?}");
                let frame = Expected::new(delivery.t, delivery.fields.clone());
                expected.entry(*who).or_default().push(frame);
            }
        }
        for (who, frames) in expected {
            self.receive(who, frames, true).await;
        }
    }

    /// Runs one row and holds its action against the table.
    async fn run(&mut self, row: &Row, check: &Check) {
        let _doing = Doing(format!("row {} / {}", row.event, row.emitter));
        self.action = None;
        (check.trigger)(self).await;
        assert!(
            !self.sockets.contains_key(&Probe),
            "the trigger closes its probe"
        );
        let Recorded { effect, sockets } = self.action.take().expect("the trigger acted");
        let caused_by_the_row = |d: &&Delivery| effect.emitter_of(d) == row.emitter;
        assert!(
            effect.deliveries.iter().any(|d| caused_by_the_row(&d)),
            "the action ({}) sets off the row's emitter",
            effect.emitter
        );
        let to: BTreeSet<Who> = check.to.iter().copied().collect();
        let not: BTreeSet<Who> = check.not.iter().copied().collect();
        assert!(to.is_disjoint(&not), "to and not overlap");
        assert_eq!(
            &to | &not,
            sockets,
            "to and not name every socket of the scene"
        );
        let reached: BTreeSet<Who> = effect
            .deliveries
            .iter()
            .filter(caused_by_the_row)
            .filter(|d| d.t == row.event)
            .flat_map(|d| d.to.iter().copied())
            .collect();
        assert_eq!(
            reached, to,
            "the action delivers {} to exactly `to`",
            row.event
        );
        // Nothing more, from any service, once the row is done.
        self.sentinels(&Service::all(), true).await;
    }

    // --- helpers for triggers ---

    fn user(&self, person: Person) -> User {
        self.kits[&person].user.clone()
    }

    fn in_guild(&self, rest: &str) -> String {
        format!("/guilds/{}{rest}", self.guild)
    }

    fn in_channel(&self, channel: &str, rest: &str) -> String {
        format!("/guilds/{}/channels/{channel}{rest}", self.guild)
    }

    /// A call that must succeed; returns its body.
    async fn ok(&self, method: Method, path: &str, user: &User, body: Option<Value>) -> Value {
        let (status, response) = self
            .t
            .call(method.clone(), path, Some(&user.token), body)
            .await;
        assert!(
            status == 200 || (status == 204 && response.is_null()),
            "{method} {path}: {status} {response}"
        );
        response
    }

    /// Sends a client frame on a socket of the scene.
    async fn send_frame(&mut self, who: Who, frame: Value) {
        let socket = self.sockets.get_mut(&who).expect("socket");
        socket.send_json(frame).await;
    }

    async fn send_subscribe(&mut self, who: Who, channel: &str) {
        let guild = self.guild.clone();
        let socket = self.sockets.get_mut(&who).expect("socket");
        socket.subscribe(&guild, channel).await;
    }

    /// Opens the row's probe socket for `user`; its `ready` is the effect.
    async fn open_probe(&mut self, gateway: usize, user: &User) -> Effect {
        let socket = self.t.open(gateway, user).await;
        assert!(self.sockets.insert(Probe, socket).is_none(), "one probe");
        Effect::new(
            CONNECT,
            vec![deliver("ready", &[Probe], json!({"user_id": user.id}))],
        )
    }

    fn close_probe(&mut self) {
        self.sockets.remove(&Probe).expect("a probe to close");
    }

    async fn fresh_user(&self, name: &str) -> User {
        self.t.user(name).await
    }

    /// `user` joins the main guild, from `address` if given.
    async fn join(&self, user: &User, address: Option<&str>) -> Effect {
        let mut request = self
            .t
            .http
            .post(self.t.api(&self.in_guild("/join")))
            .bearer_auth(&user.token);
        if let Some(address) = address {
            request = request.header("x-forwarded-for", address);
        }
        let response = request.send().await.expect("request sent");
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["outcome"], "accepted", "{body}");
        Effect::new(JOIN, vec![self.member_added(user)])
    }

    fn member_added(&self, user: &User) -> Delivery {
        let fields = json!({"guild_id": self.guild, "user_id": user.id, "role": "member"});
        deliver("workspace_member_add", GUILD, fields)
    }

    async fn post_message(&self, author: &User, channel: &str, to: &[Who]) -> (String, Effect) {
        let path = self.in_channel(channel, "/messages");
        let body = json!({"content": "catalogued **event**"});
        let message = self.ok(Method::POST, &path, author, Some(body)).await;
        let id = message["message_id"].as_str().expect("id").to_owned();
        // The event is the flat message the REST call returned.
        let effect = Effect::new(POST_MESSAGE, vec![deliver("message_create", to, message)]);
        (id, effect)
    }

    /// Adds (POST) or removes (DELETE) `user`'s reaction in `general`.
    async fn react(&self, method: Method, user: &User, message: &str) -> Effect {
        let thumbs_up = "%F0%9F%91%8D";
        let path = self.in_channel(
            &self.general,
            &format!("/messages/{message}/reactions/{thumbs_up}"),
        );
        let (emitter, operation, count) = if method == Method::POST {
            (REACT, "add", 1)
        } else {
            (UNREACT, "remove", 0)
        };
        self.ok(method, &path, user, None).await;
        let fields = json!({
            "guild_id": self.guild, "channel_id": self.general, "message_id": message,
            "emoji": "👍", "count": count, "operation": operation, "actor_user_id": user.id,
        });
        Effect::new(emitter, vec![deliver("message_reaction", GUILD, fields)])
    }

    /// The frames of an accepted subscribe to a main guild channel.
    fn acks(
        &self,
        to: &[Who],
        channel: &str,
        present: &[&User],
        participants: Value,
    ) -> Vec<Delivery> {
        let present = present.iter().map(|u| json!(u.id)).collect();
        subscribe_acks(
            to,
            &self.guild,
            channel,
            Some(any_order(present)),
            Some(participants),
        )
    }

    async fn create_role(&self, name: &str) -> (String, Effect) {
        let body = json!({"name": name, "permissions": []});
        let owner = self.user(Owner);
        let role = self
            .ok(Method::POST, &self.in_guild("/roles"), &owner, Some(body))
            .await;
        let id = role["role_id"].as_str().expect("role id").to_owned();
        // The event omits a null colour (PROTOCOL.md §5.4).
        assert_eq!(role["color_hex"], Value::Null, "{role}");
        let mut event_role = role.clone();
        if let Some(fields) = event_role.as_object_mut() {
            fields.remove("color_hex");
        }
        let fields = json!({"guild_id": self.guild, "role": event_role, "actor_user_id": owner.id});
        let effect = Effect::new(
            CREATE_ROLE,
            vec![deliver("workspace_role_create", GUILD, fields)],
        );
        (id, effect)
    }

    /// The owner gives (POST) or takes (DELETE) `role` to the member.
    async fn assignment(&self, method: Method, role: &str) -> Effect {
        let (owner, member) = (self.user(Owner), self.user(Member));
        let path = self.in_guild(&format!("/roles/{role}/members/{}", member.id));
        let (emitter, t) = if method == Method::POST {
            (ASSIGN_ROLE, "workspace_role_assignment_add")
        } else {
            (UNASSIGN_ROLE, "workspace_role_assignment_remove")
        };
        self.ok(method, &path, &owner, None).await;
        let fields = json!({"guild_id": self.guild, "user_id": member.id, "role_id": role});
        Effect::new(emitter, vec![deliver(t, GUILD, fields)])
    }

    /// The owner bans the addresses `user` joined from; returns the ban.
    async fn ban_addresses_of(&self, user: &User) -> (String, Effect) {
        let owner = self.user(Owner);
        let body = json!({"target_user_id": user.id});
        let created = self
            .ok(
                Method::POST,
                &self.in_guild("/ip-bans/by-user"),
                &owner,
                Some(body),
            )
            .await;
        assert_eq!(created["created_count"], 1, "{created}");
        let ban = created["ban_ids"][0].as_str().expect("ban id").to_owned();
        (ban, self.ip_ban_sync(BAN_ADDRESSES, "upsert"))
    }

    async fn lift_ip_ban(&self, ban: &str) -> Effect {
        let path = self.in_guild(&format!("/ip-bans/{ban}"));
        self.ok(Method::DELETE, &path, &self.user(Owner), None)
            .await;
        self.ip_ban_sync(LIFT_IP_BAN, "remove")
    }

    /// Only the owner holds `manage_ip_bans` among the scene's sockets.
    fn ip_ban_sync(&self, emitter: &'static str, action: &str) -> Effect {
        let fields = json!({
            "guild_id": self.guild,
            "summary": {"action": action, "changed_count": 1},
            "actor_user_id": self.user(Owner).id,
        });
        Effect::new(
            emitter,
            vec![deliver("workspace_ip_ban_sync", OWNER_ONLY, fields)],
        )
    }

    /// The owner uploads a PNG as their avatar or banner.
    async fn upload(&self, kind: &str, emitter: &'static str, t: &'static str) -> Effect {
        const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\0\0\0\0\0catalogue";
        let owner = self.user(Owner);
        let response = self
            .t
            .http
            .post(self.t.api(&format!("/users/me/profile/{kind}")))
            .bearer_auth(&owner.token)
            .header("content-type", "image/png")
            .body(PNG)
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status().as_u16(), 200);
        let profile: Value = response.json().await.expect("json");
        let version = format!("{kind}_version");
        let fields = json!({"user_id": owner.id, version.as_str(): profile[&version]});
        Effect::new(emitter, vec![deliver(t, PROFILE, fields)])
    }

    /// The outsider asks the friend to be friends; returns the request.
    async fn request_friendship(&self) -> (String, Effect) {
        let (outsider, friend) = (self.user(Outsider), self.user(Friend));
        let body = json!({"recipient_user_id": friend.id});
        let request = self
            .ok(Method::POST, "/friends/requests", &outsider, Some(body))
            .await;
        let id = request["request_id"]
            .as_str()
            .expect("request id")
            .to_owned();
        let fields = json!({
            "request_id": id,
            "sender_user_id": outsider.id, "sender_username": outsider.username,
            "recipient_user_id": friend.id, "recipient_username": friend.username,
        });
        let effect = Effect::new(
            REQUEST_FRIEND,
            vec![deliver("friend_request_create", FRIEND_PARTIES, fields)],
        );
        (id, effect)
    }

    /// Each party gets its own copy, naming the other as the friend.
    async fn accept_friendship(&self, request: &str) -> Effect {
        let (outsider, friend) = (self.user(Outsider), self.user(Friend));
        let path = format!("/friends/requests/{request}/accept");
        self.ok(Method::POST, &path, &friend, None).await;
        let copy = |receiver: &User, other: &User| {
            json!({
                "request_id": request, "state": "accepted", "user_id": receiver.id,
                "friend_user_id": other.id, "friend_username": other.username,
            })
        };
        Effect::new(
            ACCEPT_FRIEND,
            vec![
                deliver("friend_request_update", &[X], copy(&outsider, &friend)),
                deliver("friend_request_update", &[F], copy(&friend, &outsider)),
            ],
        )
    }

    /// Cancelled by the outsider or declined by the friend.
    async fn drop_request(&self, by: Person, request: &str) -> Effect {
        let actor = self.user(by);
        let path = format!("/friends/requests/{request}");
        self.ok(Method::DELETE, &path, &actor, None).await;
        let fields = json!({"request_id": request, "actor_user_id": actor.id});
        Effect::new(
            DELETE_FRIEND_REQUEST,
            vec![deliver("friend_request_delete", FRIEND_PARTIES, fields)],
        )
    }

    async fn unfriend(&self) -> Effect {
        let (outsider, friend) = (self.user(Outsider), self.user(Friend));
        self.ok(
            Method::DELETE,
            &format!("/friends/{}", friend.id),
            &outsider,
            None,
        )
        .await;
        let copy = |receiver: &User, other: &User| json!({"user_id": receiver.id, "friend_user_id": other.id, "actor_user_id": outsider.id});
        Effect::new(
            UNFRIEND,
            vec![
                deliver("friend_remove", &[X], copy(&outsider, &friend)),
                deliver("friend_remove", &[F], copy(&friend, &outsider)),
            ],
        )
    }

    fn in_voice(&self, route: &str) -> String {
        self.in_channel(&self.voice, &format!("/voice/{route}"))
    }

    async fn voice_token(&self, user: &User, body: Value) {
        self.ok(Method::POST, &self.in_voice("token"), user, Some(body))
            .await;
    }

    /// The main guild's voice channel and its subscribers.
    fn lounge(&self) -> Room {
        Room {
            channel: self.voice.clone(),
            listeners: VOICE,
        }
    }

    /// `user`'s first token in the (empty) voice channel: the channel hears
    /// the join and each stream; `sockets`, the user's, get the roster.
    fn joined(&self, user: &User, streams: &[&str], sockets: &[Who]) -> Effect {
        self.joined_in(&self.lounge(), user, streams, sockets)
    }

    /// [`joined`](Self::joined), in `room`.
    fn joined_in(&self, room: &Room, user: &User, streams: &[&str], sockets: &[Who]) -> Effect {
        let channel = json!({"guild_id": self.guild, "channel_id": room.channel});
        let mut deliveries = vec![deliver(
            "voice_participant_join",
            room.listeners,
            with(&channel, json!({"participant": {"user_id": user.id}})),
        )];
        for stream in streams {
            let fields = with(&channel, json!({"user_id": user.id, "stream": stream}));
            deliveries.push(deliver("voice_stream_publish", room.listeners, fields));
        }
        let roster = json!({"participants": [{"user_id": user.id}]});
        deliveries.push(deliver(
            "voice_participant_sync",
            sockets,
            with(&channel, roster),
        ));
        Effect::new(VOICE_TOKEN, deliveries)
    }

    /// `user` is out of the voice channel: each stream unpublished, then
    /// the leave.
    fn left(&self, emitter: &'static str, user: &User, streams: &[&str]) -> Effect {
        self.left_from(&self.lounge(), emitter, user, streams)
    }

    /// [`left`](Self::left), from `room`.
    fn left_from(
        &self,
        room: &Room,
        emitter: &'static str,
        user: &User,
        streams: &[&str],
    ) -> Effect {
        let channel = json!({"guild_id": self.guild, "channel_id": room.channel});
        let mut deliveries = Vec::new();
        for stream in streams {
            let fields = with(&channel, json!({"user_id": user.id, "stream": stream}));
            deliveries.push(deliver("voice_stream_unpublish", room.listeners, fields));
        }
        let fields = with(&channel, json!({"user_id": user.id}));
        deliveries.push(deliver("voice_participant_leave", room.listeners, fields));
        Effect::new(emitter, deliveries)
    }

    async fn leave_voice(&self, user: &User, streams: &[&str]) -> Effect {
        self.leave_room(&self.lounge(), user, streams).await
    }

    /// [`leave_voice`](Self::leave_voice), from `room`.
    async fn leave_room(&self, room: &Room, user: &User, streams: &[&str]) -> Effect {
        let path = self.in_channel(&room.channel, "/voice/leave");
        self.ok(Method::POST, &path, user, None).await;
        self.left_from(room, VOICE_LEAVE, user, streams)
    }

    /// The owner creates a channel in the main guild; it has no overrides,
    /// so the whole guild hears of it.
    async fn owner_creates(&self, body: Value) -> (Created, Effect) {
        let owner = self.user(Owner);
        let channel = self
            .ok(
                Method::POST,
                &self.in_guild("/channels"),
                &owner,
                Some(body),
            )
            .await;
        let created = Created {
            id: channel["channel_id"].as_str().expect("id").to_owned(),
            kind: channel["kind"].as_str().expect("kind").to_owned(),
        };
        let fields = json!({"guild_id": self.guild, "channel": channel});
        let announced = deliver("channel_create", GUILD, fields);
        (created, Effect::new(CREATE_CHANNEL, vec![announced]))
    }

    /// The owner sets the member's override in `channel`; the guild hears
    /// of it.
    async fn override_for_member(&self, channel: &str, allow: &[&str], deny: &[&str]) -> Effect {
        let (owner, member) = (self.user(Owner), self.user(Member));
        let body = json!({"allow": allow, "deny": deny});
        let path = self.in_channel(
            channel,
            &format!("/permission-overrides/member/{}", member.id),
        );
        self.ok(Method::POST, &path, &owner, Some(body.clone()))
            .await;
        let fields = json!({"guild_id": self.guild, "channel_id": channel,
            "target_kind": "member", "target_id": member.id,
            "updated_fields": body, "actor_user_id": owner.id});
        let updated = deliver(
            "workspace_channel_permission_override_update",
            GUILD,
            fields,
        );
        Effect::new(TARGETED_OVERRIDE, vec![updated])
    }

    /// `user` edits their profile's about text; `to`, their audience, hears
    /// of it.
    async fn edit_profile(&self, user: &User, about: &str, to: &[Who]) -> Effect {
        let body = json!({"about_markdown": about});
        self.ok(Method::PATCH, "/users/me/profile", user, Some(body))
            .await;
        let fields = json!({"user_id": user.id, "updated_fields": {"about_markdown": about}});
        Effect::new(EDIT_PROFILE, vec![deliver("profile_update", to, fields)])
    }

    /// The owner kicks `user`: the guild and `user`'s sockets (the probe,
    /// if any) hear the removal.
    async fn kick(&self, user: &User) -> Effect {
        let owner = self.user(Owner);
        let path = self.in_guild(&format!("/members/{}/kick", user.id));
        self.ok(Method::POST, &path, &owner, None).await;
        let fields = json!({"guild_id": self.guild, "user_id": user.id, "reason": "kick",
            "actor_user_id": owner.id});
        let removed = deliver("workspace_member_remove", GUILD_AND_PROBE, fields);
        Effect::new(KICK, vec![removed])
    }

    /// A new member with one socket (the probe) and no subscription.
    async fn member_with_a_bare_socket(&mut self) -> User {
        let user = self.fresh_user("removed").await;
        let joined = self.join(&user, None).await;
        self.step(joined).await;
        let opened = self.open_probe(0, &user).await;
        self.step(opened).await;
        user
    }

    /// A new member whose probe socket subscribes to `general`; returns the
    /// visitor and the effect of that subscribe.
    async fn visitor_arrives(&mut self) -> (User, Effect) {
        let visitor = self.fresh_user("visitor").await;
        let joined = self.join(&visitor, None).await;
        self.step(joined).await;
        let opened = self.open_probe(1, &visitor).await;
        self.step(opened).await;
        let general = self.general.clone();
        self.send_subscribe(Probe, &general).await;
        let (owner, member) = (self.user(Owner), self.user(Member));
        let mut deliveries = self.acks(&[Probe], &general, &[&owner, &member, &visitor], json!([]));
        deliveries.push(self.presence(&visitor, "online", GUILD_AND_PROBE));
        (visitor, Effect::new(SUBSCRIBE, deliveries))
    }

    fn presence(&self, user: &User, status: &str, to: &[Who]) -> Delivery {
        let fields = json!({"guild_id": self.guild, "user_id": user.id, "status": status});
        deliver("presence_update", to, fields)
    }
}

/// A channel a row created.
struct Created {
    id: String,
    kind: String,
}

/// A voice channel of the main guild, and the sockets subscribed to it.
struct Room {
    channel: String,
    listeners: &'static [Who],
}

/// The frames of an accepted subscribe, in the order of PROTOCOL.md §5.5 (the
/// check does not hold them to it): `presence_sync` (its user ids when
/// given), `subscribed`, `voice_participant_sync` (its participants when
/// given).
fn subscribe_acks(
    to: &[Who],
    guild: &str,
    channel: &str,
    present: Option<Value>,
    participants: Option<Value>,
) -> Vec<Delivery> {
    let mut sync = json!({"guild_id": guild});
    if let Some(present) = present {
        sync["user_ids"] = present;
    }
    let ack = json!({"guild_id": guild, "channel_id": channel});
    let mut roster = ack.clone();
    if let Some(participants) = participants {
        roster["participants"] = participants;
    }
    vec![
        deliver("presence_sync", to, sync),
        deliver("subscribed", to, ack),
        deliver("voice_participant_sync", to, roster),
    ]
}

/// `base`'s fields and `more`'s, in one object.
fn with(base: &Value, more: Value) -> Value {
    let mut merged = base.clone();
    if let (Some(merged), Value::Object(more)) = (merged.as_object_mut(), more) {
        merged.extend(more);
    }
    merged
}

// --- triggers, in table order ------------------------------------------------------

fn open_a_socket(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let member = s.user(Member);
        let opened = s.open_probe(0, &member).await;
        s.act(opened).await;
        s.close_probe();
    })
}

/// The member's new socket subscribes to `general`, where the member is
/// already present: the snapshots are for that socket alone.
fn subscribe_a_second_socket(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (owner, member) = (s.user(Owner), s.user(Member));
        let opened = s.open_probe(1, &member).await;
        s.step(opened).await;
        let general = s.general.clone();
        s.send_subscribe(Probe, &general).await;
        let acks = s.acks(&[Probe], &general, &[&owner, &member], json!([]));
        s.act(Effect::new(SUBSCRIBE, acks)).await;
        s.close_probe();
    })
}

/// A new member's first socket subscribes: the guild (the new socket
/// included) hears them come online. Closing it is their offline.
fn visitor_comes_online(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (visitor, arrived) = s.visitor_arrives().await;
        s.act(arrived).await;
        s.close_probe();
        let offline = s.presence(&visitor, "offline", GUILD);
        s.step(Effect::new(DISCONNECT, vec![offline])).await;
    })
}

/// A member in voice closes their only socket: offline to the guild, and
/// out of voice (unpublish, then leave) for the voice channel.
fn visitor_in_voice_disconnects(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (visitor, arrived) = s.visitor_arrives().await;
        s.step(arrived).await;
        s.voice_token(&visitor, json!({})).await;
        let joined = s.joined(&visitor, &["microphone"], &[Probe]);
        s.step(joined).await;
        s.close_probe();
        let mut gone = s.left(DISCONNECT, &visitor, &["microphone"]);
        gone.deliveries.push(s.presence(&visitor, "offline", GUILD));
        s.act(gone).await;
    })
}

/// The member's first socket, opened without `?positions=1`, asks to
/// resume the main guild's log, where it is subscribed: a socket that did
/// not ask for positions from the start gets nothing replayed and each log
/// answered with resync, and no other socket hears of it.
fn member_resumes_without_positions(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let scope = format!("g:{}", s.guild);
        let mut positions = serde_json::Map::new();
        positions.insert(scope.clone(), json!("00.0"));
        let resume = json!({"v": 1, "t": "resume", "d": {"positions": positions}});
        s.send_frame(M1, resume).await;
        let fields = json!({"scope": scope, "replayed": 0, "resync": true});
        let resumed = deliver("resumed", M1_ONLY, fields);
        s.act(Effect::new(RESUME, vec![resumed])).await;
    })
}

/// The member's first socket pings: the pong, with the ping's nonce, comes
/// back on that socket alone.
fn member_pings(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let ping = json!({"v": 1, "t": "ping", "d": {"nonce": "n1"}});
        s.send_frame(M1, ping).await;
        let pong = deliver("pong", M1_ONLY, json!({"nonce": "n1"}));
        s.act(Effect::new(PING, vec![pong])).await;
    })
}

fn member_posts(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let member = s.user(Member);
        let (_, posted) = s.post_message(&member, &s.general, GUILD).await;
        s.act(posted).await;
    })
}

/// The same message, sent as a gateway frame on a socket of the member's.
fn member_posts_over_the_socket(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (owner, member) = (s.user(Owner), s.user(Member));
        let opened = s.open_probe(0, &member).await;
        s.step(opened).await;
        let general = s.general.clone();
        s.send_subscribe(Probe, &general).await;
        let acks = s.acks(&[Probe], &general, &[&owner, &member], json!([]));
        s.step(Effect::new(SUBSCRIBE, acks)).await;
        let content = "over the socket";
        let frame = json!({"v": 1, "t": "message_create",
            "d": {"guild_id": s.guild, "channel_id": general, "content": content}});
        s.sockets
            .get_mut(&Probe)
            .expect("probe")
            .send_json(frame)
            .await;
        let fields = json!({"guild_id": s.guild, "channel_id": general,
            "author_id": member.id, "content": content});
        let created = deliver("message_create", GUILD_AND_PROBE, fields);
        s.act(Effect::new(SEND_OVER_SOCKET, vec![created])).await;
        s.close_probe();
    })
}

/// `private` is the owner's alone among the scene's sockets.
fn owner_edits_in_private(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let owner = s.user(Owner);
        let (id, posted) = s.post_message(&owner, &s.private, OWNER_ONLY).await;
        s.step(posted).await;
        let path = s.in_channel(&s.private, &format!("/messages/{id}"));
        let body = json!({"content": "edited"});
        s.ok(Method::PATCH, &path, &owner, Some(body)).await;
        let fields = json!({"guild_id": s.guild, "channel_id": s.private, "message_id": id,
            "updated_fields": {"content": "edited"}});
        let edited = deliver("message_update", OWNER_ONLY, fields);
        s.act(Effect::new(EDIT_MESSAGE, vec![edited])).await;
    })
}

fn owner_deletes_a_members_message(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (owner, member) = (s.user(Owner), s.user(Member));
        let (id, posted) = s.post_message(&member, &s.general, GUILD).await;
        s.step(posted).await;
        let path = s.in_channel(&s.general, &format!("/messages/{id}"));
        s.ok(Method::DELETE, &path, &owner, None).await;
        let fields = json!({"guild_id": s.guild, "channel_id": s.general, "message_id": id});
        let deleted = deliver("message_delete", GUILD, fields);
        s.act(Effect::new(DELETE_MESSAGE, vec![deleted])).await;
    })
}

fn member_reacts(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (owner, member) = (s.user(Owner), s.user(Member));
        let (id, posted) = s.post_message(&owner, &s.general, GUILD).await;
        s.step(posted).await;
        let reacted = s.react(Method::POST, &member, &id).await;
        s.act(reacted).await;
    })
}

fn member_unreacts(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (owner, member) = (s.user(Owner), s.user(Member));
        let (id, posted) = s.post_message(&owner, &s.general, GUILD).await;
        s.step(posted).await;
        let reacted = s.react(Method::POST, &member, &id).await;
        s.step(reacted).await;
        let unreacted = s.react(Method::DELETE, &member, &id).await;
        s.act(unreacted).await;
    })
}

/// A new channel has no overrides: every member present can view it.
fn owner_creates_a_channel(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (channel, created) = s.owner_creates(json!({"name": "news"})).await;
        assert_eq!(channel.kind, "text", "the default kind");
        s.act(created).await;
    })
}

/// Only `private`'s subscribers hear its new name, not the members who
/// cannot view it.
fn owner_renames_private(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let owner = s.user(Owner);
        let body = json!({"name": "back-office"});
        let path = s.in_channel(&s.private, "");
        s.ok(Method::PATCH, &path, &owner, Some(body)).await;
        let fields = json!({"guild_id": s.guild, "channel_id": s.private,
            "updated_fields": {"name": "back-office"}, "actor_user_id": owner.id});
        let renamed = deliver("channel_update", OWNER_ONLY, fields);
        s.act(Effect::new(RENAME_CHANNEL, vec![renamed])).await;
    })
}

/// The owner and M1 subscribe to a new channel, M2 does not; the delete
/// reaches the two subscribers.
fn owner_deletes_a_subscribed_channel(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (owner, member) = (s.user(Owner), s.user(Member));
        let (Created { id, .. }, created) = s.owner_creates(json!({"name": "doomed"})).await;
        s.step(created).await;
        s.send_subscribe(O, &id).await;
        s.send_subscribe(M1, &id).await;
        let acks = s.acks(VOICE, &id, &[&owner, &member], json!([]));
        s.step(Effect::new(SUBSCRIBE, acks)).await;
        s.ok(Method::DELETE, &s.in_channel(&id, ""), &owner, None)
            .await;
        let fields = json!({"guild_id": s.guild, "channel_id": id, "actor_user_id": owner.id});
        let deleted = deliver("channel_delete", VOICE, fields);
        s.act(Effect::new(DELETE_CHANNEL, vec![deleted])).await;
    })
}

fn owner_renames_the_guild(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let owner = s.user(Owner);
        let body = json!({"name": "Catalogue"});
        s.ok(Method::PATCH, &s.in_guild(""), &owner, Some(body))
            .await;
        let fields = json!({"guild_id": s.guild, "updated_fields": {"name": "Catalogue"},
            "actor_user_id": owner.id});
        let updated = deliver("workspace_update", GUILD, fields);
        s.act(Effect::new(UPDATE_GUILD, vec![updated])).await;
    })
}

fn newcomer_joins(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let newcomer = s.fresh_user("newcomer").await;
        let joined = s.join(&newcomer, None).await;
        s.act(joined).await;
    })
}

fn owner_adds_a_member(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (owner, added) = (s.user(Owner), s.fresh_user("added").await);
        let path = s.in_guild(&format!("/members/{}", added.id));
        s.ok(Method::POST, &path, &owner, None).await;
        let member_added = s.member_added(&added);
        s.act(Effect::new(ADD_MEMBER, vec![member_added])).await;
    })
}

fn owner_promotes_a_member(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (owner, promoted) = (s.user(Owner), s.fresh_user("promoted").await);
        let joined = s.join(&promoted, None).await;
        s.step(joined).await;
        let path = s.in_guild(&format!("/members/{}", promoted.id));
        let body = json!({"role": "moderator"});
        s.ok(Method::PATCH, &path, &owner, Some(body)).await;
        let fields = json!({"guild_id": s.guild, "user_id": promoted.id,
            "updated_fields": {"role": "moderator"}, "actor_user_id": owner.id});
        let updated = deliver("workspace_member_update", GUILD, fields);
        s.act(Effect::new(SET_MEMBER_ROLE, vec![updated])).await;
    })
}

/// The removed member's socket, subscribed nowhere, hears the removal too.
fn owner_kicks(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let kicked = s.member_with_a_bare_socket().await;
        let removed = s.kick(&kicked).await;
        s.act(removed).await;
        s.close_probe();
    })
}

/// A visitor present in `general` is kicked: their socket loses its last
/// subscription in the guild, so presence marks them offline there, for
/// the guild but not for them. Their socket hears nothing more of the
/// guild: a later post in `general` does not reach it before their own
/// profile change does.
fn visitor_is_kicked(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (visitor, arrived) = s.visitor_arrives().await;
        s.step(arrived).await;
        let offline = s.presence(&visitor, "offline", GUILD);
        let kicked = s.kick(&visitor).await;
        s.act(kicked.and(Effect::new(REVOCATION, vec![offline])))
            .await;
        let owner = s.user(Owner);
        let (_, posted) = s.post_message(&owner, &s.general, GUILD).await;
        s.step(posted).await;
        let updated = s.edit_profile(&visitor, "kicked", &[Probe]).await;
        s.step(updated).await;
        s.close_probe();
    })
}

/// The ban goes to the guild, the removal also to the banned member's
/// socket, which is not present in the guild.
fn owner_bans(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (owner, banned) = (s.user(Owner), s.member_with_a_bare_socket().await);
        let path = s.in_guild(&format!("/members/{}/ban", banned.id));
        s.ok(Method::POST, &path, &owner, None).await;
        let ban = json!({"guild_id": s.guild, "user_id": banned.id, "actor_user_id": owner.id});
        let remove = with(&ban, json!({"reason": "ban"}));
        s.act(Effect::new(
            BAN,
            vec![
                deliver("workspace_member_ban", GUILD, ban),
                deliver("workspace_member_remove", GUILD_AND_PROBE, remove),
            ],
        ))
        .await;
        s.close_probe();
    })
}

fn owner_creates_a_role(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (_, created) = s.create_role("crew").await;
        s.act(created).await;
    })
}

fn owner_renames_a_role(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (role, created) = s.create_role("deckhands").await;
        s.step(created).await;
        let owner = s.user(Owner);
        let body = json!({"name": "sailors"});
        let path = s.in_guild(&format!("/roles/{role}"));
        s.ok(Method::PATCH, &path, &owner, Some(body)).await;
        let fields = json!({"guild_id": s.guild, "role_id": role,
            "updated_fields": {"name": "sailors"}, "actor_user_id": owner.id});
        let updated = deliver("workspace_role_update", GUILD, fields);
        s.act(Effect::new(UPDATE_ROLE, vec![updated])).await;
    })
}

fn owner_deletes_a_role(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (role, created) = s.create_role("temporary").await;
        s.step(created).await;
        let owner = s.user(Owner);
        let path = s.in_guild(&format!("/roles/{role}"));
        s.ok(Method::DELETE, &path, &owner, None).await;
        let fields = json!({"guild_id": s.guild, "role_id": role, "actor_user_id": owner.id});
        let deleted = deliver("workspace_role_delete", GUILD, fields);
        s.act(Effect::new(DELETE_ROLE, vec![deleted])).await;
    })
}

fn owner_reorders_roles(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (first, created) = s.create_role("first").await;
        s.step(created).await;
        let (second, created) = s.create_role("second").await;
        s.step(created).await;
        let owner = s.user(Owner);
        let body = json!({"role_ids": [second, first]});
        s.ok(
            Method::POST,
            &s.in_guild("/roles/reorder"),
            &owner,
            Some(body),
        )
        .await;
        let fields = json!({"guild_id": s.guild, "role_ids": [second, first],
            "actor_user_id": owner.id});
        let reordered = deliver("workspace_role_reorder", GUILD, fields);
        s.act(Effect::new(REORDER_ROLES, vec![reordered])).await;
    })
}

fn owner_assigns_a_role(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (role, created) = s.create_role("assigned").await;
        s.step(created).await;
        let assigned = s.assignment(Method::POST, &role).await;
        s.act(assigned).await;
    })
}

fn owner_unassigns_a_role(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (role, created) = s.create_role("unassigned").await;
        s.step(created).await;
        let assigned = s.assignment(Method::POST, &role).await;
        s.step(assigned).await;
        let unassigned = s.assignment(Method::DELETE, &role).await;
        s.act(unassigned).await;
    })
}

/// A harmless grant in `general`: nobody's view changes.
fn owner_overrides_a_legacy_role(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let owner = s.user(Owner);
        let body = json!({"allow": ["publish_video"], "deny": []});
        let path = s.in_channel(&s.general, "/overrides/moderator");
        s.ok(Method::POST, &path, &owner, Some(body.clone())).await;
        let fields = json!({"guild_id": s.guild, "channel_id": s.general, "role": "moderator",
            "updated_fields": body, "actor_user_id": owner.id});
        let updated = deliver("workspace_channel_role_override_update", GUILD, fields);
        s.act(Effect::new(LEGACY_OVERRIDE, vec![updated])).await;
    })
}

/// A harmless grant to the member in `general`: their view does not change.
fn owner_overrides_for_a_member(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let updated = s
            .override_for_member(&s.general, &["publish_video"], &[])
            .await;
        s.act(updated).await;
    })
}

/// A member who joined from 198.51.100.7 has that address banned, only the
/// owner holds `manage_ip_bans` to hear of it; the ban is lifted after.
fn owner_bans_addresses(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let target = s.fresh_user("banned").await;
        let joined = s.join(&target, Some("198.51.100.7")).await;
        s.step(joined).await;
        let (ban, banned) = s.ban_addresses_of(&target).await;
        s.act(banned).await;
        let lifted = s.lift_ip_ban(&ban).await;
        s.step(lifted).await;
    })
}

fn owner_lifts_an_ip_ban(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let target = s.fresh_user("pardoned").await;
        let joined = s.join(&target, Some("198.51.100.8")).await;
        s.step(joined).await;
        let (ban, banned) = s.ban_addresses_of(&target).await;
        s.step(banned).await;
        let lifted = s.lift_ip_ban(&ban).await;
        s.act(lifted).await;
    })
}

fn owner_edits_their_profile(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let owner = s.user(Owner);
        let updated = s.edit_profile(&owner, "catalogued", PROFILE).await;
        s.act(updated).await;
    })
}

fn owner_uploads_an_avatar(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let uploaded = s
            .upload("avatar", UPLOAD_AVATAR, "profile_avatar_update")
            .await;
        s.act(uploaded).await;
    })
}

fn owner_uploads_a_banner(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let uploaded = s
            .upload("banner", UPLOAD_BANNER, "profile_banner_update")
            .await;
        s.act(uploaded).await;
    })
}

fn outsider_asks_the_friend(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (request, requested) = s.request_friendship().await;
        s.act(requested).await;
        let cancelled = s.drop_request(Outsider, &request).await;
        s.step(cancelled).await;
    })
}

fn friend_accepts(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (request, requested) = s.request_friendship().await;
        s.step(requested).await;
        let accepted = s.accept_friendship(&request).await;
        s.act(accepted).await;
        let unfriended = s.unfriend().await;
        s.step(unfriended).await;
    })
}

fn friend_declines(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (request, requested) = s.request_friendship().await;
        s.step(requested).await;
        let declined = s.drop_request(Friend, &request).await;
        s.act(declined).await;
    })
}

fn outsider_unfriends(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (request, requested) = s.request_friendship().await;
        s.step(requested).await;
        let accepted = s.accept_friendship(&request).await;
        s.step(accepted).await;
        let unfriended = s.unfriend().await;
        s.act(unfriended).await;
    })
}

/// A listening owner is in voice; the member's new socket subscribes to
/// the voice channel and gets the roster with the owner in it.
fn subscribe_while_the_owner_is_in_voice(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let (owner, member) = (s.user(Owner), s.user(Member));
        let listen_only = json!({"can_publish": false, "can_subscribe": true});
        s.voice_token(&owner, listen_only).await;
        let joined = s.joined(&owner, &[], OWNER_ONLY);
        s.step(joined).await;
        let opened = s.open_probe(1, &member).await;
        s.step(opened).await;
        let voice = s.voice.clone();
        s.send_subscribe(Probe, &voice).await;
        let roster = json!([{"user_id": owner.id}]);
        let acks = s.acks(&[Probe], &voice, &[&owner, &member], roster);
        s.act(Effect::new(SUBSCRIBE, acks)).await;
        s.close_probe();
        let left = s.leave_voice(&owner, &[]).await;
        s.step(left).await;
    })
}

fn member_joins_voice(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let member = s.user(Member);
        s.voice_token(&member, json!({})).await;
        let joined = s.joined(&member, &["microphone"], &[M1, M2]);
        s.act(joined).await;
        let left = s.leave_voice(&member, &["microphone"]).await;
        s.step(left).await;
    })
}

fn owner_leaves_voice(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let owner = s.user(Owner);
        s.voice_token(&owner, json!({})).await;
        let joined = s.joined(&owner, &["microphone"], OWNER_ONLY);
        s.step(joined).await;
        let left = s.leave_voice(&owner, &["microphone"]).await;
        s.act(left).await;
    })
}

/// The member's token lets them subscribe; an override then denies them
/// `subscribe_streams` in the voice channel, which they still view: the
/// api takes them out of voice (unpublish, then leave) for the channel's
/// subscribers, M1 among them. Clearing the override restores the scene.
fn member_loses_subscribe_streams(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let member = s.user(Member);
        s.voice_token(&member, json!({"can_subscribe": true})).await;
        let joined = s.joined(&member, &["microphone"], &[M1, M2]);
        s.step(joined).await;
        let voice = s.voice.clone();
        let denied = s
            .override_for_member(&voice, &[], &["subscribe_streams"])
            .await;
        let removed = s.left(REVOCATION, &member, &["microphone"]);
        s.act(denied.and(removed)).await;
        let cleared = s.override_for_member(&voice, &[], &[]).await;
        s.step(cleared).await;
    })
}

/// The owner, in the voice channel, takes a token for a new voice channel
/// nobody subscribes to: out of the first (unpublish, then leave, for its
/// subscribers), into the second (heard by nobody; the roster to the
/// owner's socket).
fn owner_moves_to_another_voice_channel(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let owner = s.user(Owner);
        let body = json!({"name": "annex", "kind": "voice"});
        let (Created { id, .. }, created) = s.owner_creates(body).await;
        s.step(created).await;
        let annex = Room {
            channel: id,
            listeners: &[],
        };
        s.voice_token(&owner, json!({})).await;
        let joined = s.joined(&owner, &["microphone"], OWNER_ONLY);
        s.step(joined).await;
        let path = s.in_channel(&annex.channel, "/voice/token");
        s.ok(Method::POST, &path, &owner, Some(json!({}))).await;
        let left = s.left(VOICE_TOKEN, &owner, &["microphone"]);
        let arrived = s.joined_in(&annex, &owner, &["microphone"], OWNER_ONLY);
        s.act(left.and(arrived)).await;
        let gone = s.leave_room(&annex, &owner, &["microphone"]).await;
        s.step(gone).await;
    })
}

fn owner_mutes(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let owner = s.user(Owner);
        s.voice_token(&owner, json!({})).await;
        let joined = s.joined(&owner, &["microphone"], OWNER_ONLY);
        s.step(joined).await;
        let mute = json!({"is_muted": true});
        s.ok(Method::POST, &s.in_voice("state"), &owner, Some(mute))
            .await;
        let fields = json!({"guild_id": s.guild, "channel_id": s.voice, "user_id": owner.id,
            "updated_fields": {"is_muted": true}});
        let muted = deliver("voice_participant_update", VOICE, fields);
        s.act(Effect::new(VOICE_STATE, vec![muted])).await;
        let left = s.leave_voice(&owner, &["microphone"]).await;
        s.step(left).await;
    })
}

/// A repeat token: the owner adds (`on`) or drops the camera. The channel
/// hears the change and the stream, the owner's sockets the roster.
async fn owner_switches_the_camera(s: &mut Scene, on: bool) -> Effect {
    let owner = s.user(Owner);
    let (before, after): (&[&str], &[&str]) = if on {
        (&["microphone"], &["microphone", "camera"])
    } else {
        (&["microphone", "camera"], &["microphone"])
    };
    s.voice_token(&owner, json!({"publish_sources": before}))
        .await;
    let joined = s.joined(&owner, before, OWNER_ONLY);
    s.step(joined).await;
    s.voice_token(&owner, json!({"publish_sources": after}))
        .await;
    let channel = json!({"guild_id": s.guild, "channel_id": s.voice});
    let update = json!({"user_id": owner.id, "updated_fields": {"is_video_enabled": on}});
    let stream = json!({"user_id": owner.id, "stream": "camera"});
    let roster = json!({"participants": [{"user_id": owner.id, "is_video_enabled": on}]});
    let stream_event = if on {
        "voice_stream_publish"
    } else {
        "voice_stream_unpublish"
    };
    Effect::new(
        VOICE_TOKEN,
        vec![
            deliver("voice_participant_update", VOICE, with(&channel, update)),
            deliver(stream_event, VOICE, with(&channel, stream)),
            deliver("voice_participant_sync", OWNER_ONLY, with(&channel, roster)),
        ],
    )
}

fn owner_turns_the_camera_on(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let switched = owner_switches_the_camera(s, true).await;
        s.act(switched).await;
        let owner = s.user(Owner);
        let left = s.leave_voice(&owner, &["microphone", "camera"]).await;
        s.step(left).await;
    })
}

fn owner_turns_the_camera_off(s: &mut Scene) -> Action<'_> {
    Box::pin(async move {
        let switched = owner_switches_the_camera(s, false).await;
        s.act(switched).await;
        let owner = s.user(Owner);
        let left = s.leave_voice(&owner, &["microphone"]).await;
        s.step(left).await;
    })
}

// --- the tests ---------------------------------------------------------------------

/// The table has exactly the manifest's `(event_type, emitter)` pairs, each
/// once: a new event or emitter in proto needs a row here.
#[test]
fn the_table_is_exactly_the_manifest() {
    let mut seen = BTreeSet::new();
    for row in ROWS {
        assert!(
            seen.insert((row.event, row.emitter)),
            "two rows for {} / {}",
            row.event,
            row.emitter
        );
    }
    let table: BTreeSet<(String, String)> = seen
        .iter()
        .map(|(t, emitter)| ((*t).to_owned(), (*emitter).to_owned()))
        .collect();
    let manifest = manifest_pairs();
    let missing: Vec<_> = manifest.difference(&table).collect();
    let extra: Vec<_> = table.difference(&manifest).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the table and docs/events.json disagree\n    \
         in the manifest, without a row: {missing:?}\n    \
         rows the manifest does not list: {extra:?}"
    );
}

/// Rows that do not run on the scene name tests that exist.
#[test]
fn rows_covered_elsewhere_name_tests_that_exist() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    for row in ROWS {
        let tests: Vec<(&str, &str)> = match &row.cover {
            Cover::Scene(_) => continue,
            Cover::Alone(test, _) => vec![(THIS_FILE, *test)],
            Cover::Elsewhere { why, tests } => {
                assert!(!why.is_empty(), "{} / {} says why", row.event, row.emitter);
                tests.to_vec()
            }
        };
        assert!(
            !tests.is_empty(),
            "{} / {} names a test",
            row.event,
            row.emitter
        );
        for (file, test) in tests {
            let source = std::fs::read_to_string(format!("{root}{file}"))
                .unwrap_or_else(|err| panic!("{file}: {err}"));
            assert!(
                source.contains(&format!("fn {test}(")),
                "{} / {}: no test {test} in {file}",
                row.event,
                row.emitter
            );
        }
    }
}

/// Every scene row, in table order, on one scene.
async fn every_row_reaches_exactly_its_audience(backends: Backends) {
    let Some(mut scene) = Scene::build(backends).await else {
        return;
    };
    for row in ROWS {
        if let Cover::Scene(check) = &row.cover {
            scene.run(row, check).await;
        }
    }
    scene.t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_every_row_reaches_exactly_its_audience() {
    every_row_reaches_exactly_its_audience(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_every_row_reaches_exactly_its_audience() {
    every_row_reaches_exactly_its_audience(Backends::External).await;
}

/// Runs the rows that name `test` on a scene of their own.
async fn run_alone(test: &str) {
    let mut scene = Scene::build(Backends::Embedded).await.expect("embedded");
    let mut ran = 0;
    for row in ROWS {
        if let Cover::Alone(name, check) = &row.cover
            && *name == test
        {
            scene.run(row, check).await;
            ran += 1;
        }
    }
    assert!(ran > 0, "no row names {test}");
    scene.t.stack.stop().await.expect("clean shutdown");
}

/// PROTOCOL.md §5.3: a `message_create` frame from a client is validated as
/// the REST route does and broadcast to the channel like a posted message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_message_create_reaches_the_channel() {
    run_alone("gateway_message_create_reaches_the_channel").await;
}

/// PROTOCOL.md §6.4, end to end: a participant nobody renews is removed once
/// the TTL ran out, not before, with unpublish then leave, on both
/// gateways; a socket outside the channel hears nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_participants_expire_end_to_end() {
    const TTL: Duration = Duration::from_secs(1);
    let t = TestStack::start_with(Backends::Embedded, 2, |config| {
        config.tune_voice = |voice| voice.participant_ttl = TTL;
    })
    .await
    .expect("embedded");
    let types = manifest_types();
    let (owner, member, outsider) = (
        t.user("owner").await,
        t.user("member").await,
        t.user("outsider").await,
    );
    let (guild, _) = t.guild_with_channel(&owner, "public").await;
    let voice = create_channel(
        &t,
        &owner,
        &guild,
        json!({"name": "lounge", "kind": "voice"}),
    )
    .await;
    let (status, body) = t
        .post(
            &format!("/guilds/{guild}/join"),
            Some(&member.token),
            json!(null),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (own_guild, own_channel) = t.guild_with_channel(&outsider, "private").await;
    let mut watchers = Vec::new();
    for (gateway, user) in [(0, &owner), (1, &member)] {
        let mut socket = t.connect(gateway, user).await;
        socket.subscribed(&guild, &voice).await;
        watchers.push(socket);
    }
    let mut outside = t.connect(1, &outsider).await;
    outside.subscribed(&own_guild, &own_channel).await;

    let issued = Instant::now();
    let path = format!("/guilds/{guild}/channels/{voice}/voice/token");
    let (status, body) = t.post(&path, Some(&member.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let member_fields = json!({"user_id": member.id});
    let microphone = json!({"user_id": member.id, "stream": "microphone"});
    let joined = vec![
        Expected::new(
            "voice_participant_join",
            json!({"participant": member_fields}),
        ),
        Expected::new("voice_stream_publish", microphone.clone()),
    ];
    let expired = vec![
        Expected::new("voice_stream_unpublish", microphone),
        Expected::new("voice_participant_leave", member_fields),
    ];
    let mut joined_for_member = joined.clone();
    joined_for_member.push(Expected::new(
        "voice_participant_sync",
        json!({"channel_id": voice}),
    ));
    receive(&mut watchers[0], &types, O, joined, true).await;
    receive(&mut watchers[1], &types, M1, joined_for_member, true).await;
    for (who, socket) in [O, M1].into_iter().zip(&mut watchers) {
        receive(socket, &types, who, expired.clone(), true).await;
        let waited = issued.elapsed();
        assert!(waited >= TTL, "expired after {waited:?}, within the TTL");
    }

    let path = format!("/guilds/{own_guild}/channels/{own_channel}/messages");
    let (status, sentinel) = t
        .post(&path, Some(&outsider.token), json!({"content": "sentinel"}))
        .await;
    assert_eq!(status, 200, "{sentinel}");
    let sentinel = Expected::new(
        "message_create",
        json!({"message_id": sentinel["message_id"]}),
    );
    receive(&mut outside, &types, X, vec![sentinel], true).await;
    t.stack.stop().await.expect("clean shutdown");
}
