//! Roles, channel overrides, guild settings and channel lifecycle, end to
//! end: every route's happy path, refusal and bad input, every event's
//! audience, and — the point of it all — that a change which hides a channel
//! takes effect on every gateway before the REST call returns.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Backends, Socket, TestStack, User};

// --- helpers -------------------------------------------------------------------

async fn send(
    t: &TestStack,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = t.http.request(method, t.api(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

async fn raw(t: &TestStack, method: Method, path: &str, token: &str, body: &'static str) -> u16 {
    t.http
        .request(method, t.api(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent")
        .status()
        .as_u16()
}

async fn post(t: &TestStack, path: &str, user: &User, body: Value) -> (u16, Value) {
    send(t, Method::POST, path, &user.token, Some(body)).await
}

async fn patch(t: &TestStack, path: &str, user: &User, body: Value) -> (u16, Value) {
    send(t, Method::PATCH, path, &user.token, Some(body)).await
}

async fn delete(t: &TestStack, path: &str, user: &User) -> (u16, Value) {
    send(t, Method::DELETE, path, &user.token, None).await
}

async fn get(t: &TestStack, path: &str, user: &User) -> (u16, Value) {
    send(t, Method::GET, path, &user.token, None).await
}

/// The guild's audit actions under `prefix`, newest first.
async fn audit_actions(t: &TestStack, g: &Guild, prefix: &str) -> Vec<String> {
    let path = g.path(&format!("/audit?action_prefix={prefix}&limit=100"));
    let (status, page) = get(t, &path, &g.owner).await;
    assert_eq!(status, 200, "{page}");
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["action"].as_str().expect("action").to_owned())
        .collect()
}

/// Frames the tests here do not look at: presence and voice snapshots that
/// other areas send around subscribes.
fn incidental(frame: &Value) -> bool {
    let t = frame["t"].as_str().unwrap_or_default();
    t.starts_with("presence_") || t == "voice_participant_sync"
}

/// The next frame this test cares about.
async fn next(socket: &mut Socket) -> Value {
    loop {
        let frame = socket.next_event().await;
        if !incidental(&frame) {
            return frame;
        }
    }
}

/// Subscribes and waits for the acknowledgement.
async fn subscribed(socket: &mut Socket, guild: &str, channel: &str) {
    socket.subscribe(guild, channel).await;
    let ack = next(socket).await;
    assert_eq!(ack["t"], "subscribed", "{ack}");
    assert_eq!(ack["d"], json!({"guild_id": guild, "channel_id": channel}));
}

/// The next relevant frame must be `t`; returns its `d`.
async fn expect_event(socket: &mut Socket, t: &str) -> Value {
    let frame = next(socket).await;
    assert_eq!(frame["t"], t, "{frame}");
    frame["d"].clone()
}

/// A guild with a public channel, its owner, and a member who joined.
struct Guild {
    id: String,
    general: String,
    owner: User,
    member: User,
}

impl Guild {
    async fn new(t: &TestStack) -> Self {
        let (owner, member) = (t.user("owner").await, t.user("member").await);
        let (id, general) = t.guild_with_channel(&owner, "public").await;
        let (status, joined) = post(t, &format!("/guilds/{id}/join"), &member, json!(null)).await;
        assert_eq!(status, 200, "{joined}");
        Self {
            id,
            general,
            owner,
            member,
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("/guilds/{}{rest}", self.id)
    }

    async fn channel(&self, t: &TestStack, name: &str) -> String {
        let (status, channel) = post(
            t,
            &self.path("/channels"),
            &self.owner,
            json!({"name": name}),
        )
        .await;
        assert_eq!(status, 200, "{channel}");
        channel["channel_id"].as_str().expect("id").to_owned()
    }

    async fn roles(&self, t: &TestStack) -> Value {
        let (status, roles) = get(t, &self.path("/roles"), &self.owner).await;
        assert_eq!(status, 200, "{roles}");
        roles
    }

    async fn role_id(&self, t: &TestStack, name: &str) -> String {
        let roles = self.roles(t).await;
        roles["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .find(|role| role["name"] == name)
            .and_then(|role| role["role_id"].as_str())
            .unwrap_or_else(|| panic!("no role {name} in {roles}"))
            .to_owned()
    }

    async fn create_role(&self, t: &TestStack, name: &str, permissions: Value) -> String {
        let body = json!({"name": name, "permissions": permissions});
        let (status, role) = post(t, &self.path("/roles"), &self.owner, body).await;
        assert_eq!(status, 200, "{role}");
        role["role_id"].as_str().expect("id").to_owned()
    }

    async fn assign(&self, t: &TestStack, actor: &User, role: &str, user: &User) -> u16 {
        let path = self.path(&format!("/roles/{role}/members/{}", user.id));
        post(t, &path, actor, json!(null)).await.0
    }

    /// Adds a member who is then made a moderator by the owner.
    async fn moderator(&self, t: &TestStack) -> User {
        let moderator = t.user("moderator").await;
        let (status, _) = post(t, &self.path("/join"), &moderator, json!(null)).await;
        assert_eq!(status, 200);
        let role = self.role_id(t, "moderator").await;
        assert_eq!(self.assign(t, &self.owner, &role, &moderator).await, 200);
        moderator
    }

    async fn override_for(
        &self,
        t: &TestStack,
        channel: &str,
        target: &str,
        allow: Value,
        deny: Value,
    ) {
        let path = self.path(&format!(
            "/channels/{channel}/permission-overrides/{target}"
        ));
        let (status, body) =
            post(t, &path, &self.owner, json!({"allow": allow, "deny": deny})).await;
        assert_eq!((status, body), (200, json!({"accepted": true})));
    }

    async fn say(&self, t: &TestStack, user: &User, channel: &str, content: &str) -> Value {
        let path = self.path(&format!("/channels/{channel}/messages"));
        let (status, message) = post(t, &path, user, json!({"content": content})).await;
        assert_eq!(status, 200, "{message}");
        message
    }
}

/// An outsider in a guild of their own, subscribed there: the proof that a
/// guild's events do not leak comes from the outsider's next frame being
/// their own sentinel message.
struct Outsider {
    user: User,
    guild: String,
    channel: String,
    socket: Socket,
}

impl Outsider {
    async fn new(t: &TestStack, gateway: usize) -> Self {
        let user = t.user("outsider").await;
        let (guild, channel) = t.guild_with_channel(&user, "private").await;
        let mut socket = t.connect(gateway, &user).await;
        subscribed(&mut socket, &guild, &channel).await;
        Self {
            user,
            guild,
            channel,
            socket,
        }
    }

    /// Posts in the outsider's own channel: it must be the next frame.
    async fn saw_nothing_else(&mut self, t: &TestStack) {
        let path = format!("/guilds/{}/channels/{}/messages", self.guild, self.channel);
        let (status, message) = post(t, &path, &self.user, json!({"content": "sentinel"})).await;
        assert_eq!(status, 200);
        let frame = next(&mut self.socket).await;
        assert_eq!(frame["t"], "message_create", "leaked: {frame}");
        assert_eq!(frame["d"]["message_id"], message["message_id"]);
    }
}

// --- role events ---------------------------------------------------------------

/// Owner A on gateway 0 and member B on gateway 1 receive every role event
/// with the documented payload; an outsider receives none.
async fn role_events_reach_the_guild_and_nobody_else(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let g = Guild::new(&t).await;
    let mut outsider = Outsider::new(&t, 0).await;
    let mut a = t.connect(0, &g.owner).await;
    let mut b = t.connect(1, &g.member).await;
    subscribed(&mut a, &g.id, &g.general).await;
    subscribed(&mut b, &g.id, &g.general).await;
    let actor = g.owner.id.as_str();

    let (status, role) = post(
        &t,
        &g.path("/roles"),
        &g.owner,
        json!({
            "name": "  Staff ",
            "permissions": ["delete_message", "create_message"],
            "color_hex": "#00ff00",
        }),
    )
    .await;
    assert_eq!(status, 200, "{role}");
    let role_id = role["role_id"].as_str().expect("id").to_owned();
    assert_eq!(
        role,
        json!({"role_id": role_id, "name": "Staff", "position": 9999, "is_system": false,
               "permissions": ["delete_message", "create_message"], "color_hex": "#00FF00"})
    );
    for socket in [&mut a, &mut b] {
        let d = expect_event(socket, "workspace_role_create").await;
        assert_eq!(
            d,
            json!({"guild_id": g.id, "role": role, "actor_user_id": actor})
        );
    }

    let role_path = g.path(&format!("/roles/{role_id}"));
    let (status, updated) = patch(&t, &role_path, &g.owner, json!({"name": "Crew"})).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["name"], "Crew");
    assert_eq!(
        updated["permissions"],
        json!(["delete_message", "create_message"])
    );
    for socket in [&mut a, &mut b] {
        let d = expect_event(socket, "workspace_role_update").await;
        assert_eq!(
            d["updated_fields"],
            json!({"name": "Crew"}),
            "only what was sent"
        );
        assert_eq!(
            (d["role_id"].as_str(), d["actor_user_id"].as_str()),
            (Some(role_id.as_str()), Some(actor))
        );
    }
    let body = json!({"color_hex": null, "permissions": ["subscribe_streams", "create_message"]});
    let (status, updated) = patch(&t, &role_path, &g.owner, body).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["color_hex"], Value::Null);
    // The stored set, in bit order.
    assert_eq!(
        updated["permissions"],
        json!(["create_message", "subscribe_streams"])
    );
    for socket in [&mut a, &mut b] {
        let d = expect_event(socket, "workspace_role_update").await;
        assert_eq!(
            d["updated_fields"],
            json!({"color_hex": null, "permissions": ["subscribe_streams", "create_message"]})
        );
    }

    let moderator = g.role_id(&t, "moderator").await;
    let (status, ack) = post(
        &t,
        &g.path("/roles/reorder"),
        &g.owner,
        json!({"role_ids": [moderator, role_id]}),
    )
    .await;
    assert_eq!((status, ack), (200, json!({"accepted": true})));
    for socket in [&mut a, &mut b] {
        let d = expect_event(socket, "workspace_role_reorder").await;
        assert_eq!(d["role_ids"], json!([moderator, role_id]));
    }
    let roles = g.roles(&t).await;
    let order: Vec<(&str, i64)> = roles["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().expect("name"),
                r["position"].as_i64().expect("position"),
            )
        })
        .collect();
    assert_eq!(
        order,
        // Ties go to the older role.
        [
            ("workspace_owner", 10_000),
            ("moderator", 2),
            ("member", 1),
            ("Crew", 1),
            ("@everyone", 0)
        ]
    );
    assert_eq!(roles["default_join_role_id"], Value::Null);

    assert_eq!(g.assign(&t, &g.owner, &role_id, &g.member).await, 200);
    for socket in [&mut a, &mut b] {
        let d = expect_event(socket, "workspace_role_assignment_add").await;
        assert_eq!(
            (d["user_id"].as_str(), d["role_id"].as_str()),
            (Some(g.member.id.as_str()), Some(role_id.as_str()))
        );
        assert!(d["assigned_at_unix"].as_i64().is_some_and(|at| at > 0));
    }
    // Assigning again changes nothing and says nothing.
    assert_eq!(g.assign(&t, &g.owner, &role_id, &g.member).await, 200);
    let assignment = g.path(&format!("/roles/{role_id}/members/{}", g.member.id));
    let (status, _) = delete(&t, &assignment, &g.owner).await;
    assert_eq!(status, 200);
    for socket in [&mut a, &mut b] {
        let d = expect_event(socket, "workspace_role_assignment_remove").await;
        assert_eq!(d["user_id"], g.member.id.as_str());
        assert!(d["removed_at_unix"].as_i64().is_some_and(|at| at > 0));
    }

    let (status, ack) = delete(&t, &role_path, &g.owner).await;
    assert_eq!((status, ack), (200, json!({"accepted": true})));
    for socket in [&mut a, &mut b] {
        let d = expect_event(socket, "workspace_role_delete").await;
        assert_eq!(
            (d["role_id"].as_str(), d["actor_user_id"].as_str()),
            (Some(role_id.as_str()), Some(actor))
        );
    }
    let (status, _) = get(&t, &role_path, &g.owner).await;
    assert_eq!(status, 405, "no GET of one role");
    assert_eq!(
        patch(&t, &role_path, &g.owner, json!({"name": "x"}))
            .await
            .0,
        404
    );

    assert_eq!(
        audit_actions(&t, &g, "role.").await,
        [
            "role.delete",
            "role.unassign",
            "role.assign",
            "role.reorder",
            "role.color.update",
            "role.permissions.update",
            "role.update",
            "role.create",
        ]
    );

    outsider.saw_nothing_else(&t).await;
    // No extra frame for A or B either: the next one is a new message.
    let message = g.say(&t, &g.owner, &g.general, "after").await;
    for socket in [&mut a, &mut b] {
        let d = expect_event(socket, "message_create").await;
        assert_eq!(d["message_id"], message["message_id"]);
    }
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_role_events_reach_the_guild_and_nobody_else() {
    role_events_reach_the_guild_and_nobody_else(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_role_events_reach_the_guild_and_nobody_else() {
    role_events_reach_the_guild_and_nobody_else(Backends::External).await;
}

// --- refusals --------------------------------------------------------------------

/// Members without the permission, moderators beyond their rank, and even
/// workspace owners for system roles are refused, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_routes_refuse_callers_without_permission_or_rank() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let g = Guild::new(&t).await;
    let outsider = t.user("outsider").await;
    let staff = g.create_role(&t, "staff", json!(["create_message"])).await;
    let owner_role = g.role_id(&t, "workspace_owner").await;
    let everyone = g.role_id(&t, "@everyone").await;
    let moderator_role = g.role_id(&t, "moderator").await;
    let member_role = g.role_id(&t, "member").await;
    let before = g.roles(&t).await;

    // A plain member may do nothing here but read.
    let m = &g.member;
    assert_eq!(get(&t, &g.path("/roles"), m).await.0, 200);
    assert_eq!(get(&t, &g.path("/roles"), &outsider).await.0, 403);
    let create = json!({"name": "mine", "permissions": []});
    assert_eq!(post(&t, &g.path("/roles"), m, create.clone()).await.0, 403);
    let staff_path = g.path(&format!("/roles/{staff}"));
    assert_eq!(patch(&t, &staff_path, m, json!({"name": "x"})).await.0, 403);
    assert_eq!(delete(&t, &staff_path, m).await.0, 403);
    let reorder = json!({"role_ids": [staff]});
    assert_eq!(
        post(&t, &g.path("/roles/reorder"), m, reorder.clone())
            .await
            .0,
        403
    );
    let default = json!({"role_id": staff});
    assert_eq!(
        post(&t, &g.path("/roles/default"), m, default.clone())
            .await
            .0,
        403
    );
    assert_eq!(g.assign(&t, m, &staff, m).await, 403);
    let own = g.path(&format!("/roles/{member_role}/members/{}", m.id));
    assert_eq!(delete(&t, &own, m).await.0, 403);

    // A moderator manages member roles below their own rank only.
    let moderator = g.moderator(&t).await;
    assert_eq!(post(&t, &g.path("/roles"), &moderator, create).await.0, 403);
    assert_eq!(g.assign(&t, &moderator, &member_role, m).await, 200);
    assert_eq!(
        g.assign(&t, &moderator, &moderator_role, m).await,
        403,
        "own rank"
    );
    assert_eq!(g.assign(&t, &moderator, &owner_role, m).await, 403);
    assert_eq!(
        g.assign(&t, &moderator, &staff, m).await,
        403,
        "staff sits at 9999"
    );

    // Only the server owner hands out or takes back workspace_owner, and
    // nobody but the server owner edits the system roles.
    assert_eq!(g.assign(&t, &g.owner, &owner_role, m).await, 403);
    let mine = g.path(&format!("/roles/{owner_role}/members/{}", g.owner.id));
    assert_eq!(delete(&t, &mine, &g.owner).await.0, 403);
    let everyone_path = g.path(&format!("/roles/{everyone}"));
    assert_eq!(
        patch(&t, &everyone_path, &g.owner, json!({"name": "all"}))
            .await
            .0,
        403
    );
    assert_eq!(delete(&t, &everyone_path, &g.owner).await.0, 403);
    assert_eq!(
        delete(&t, &g.path(&format!("/roles/{owner_role}")), &g.owner)
            .await
            .0,
        403
    );
    let system = json!({"role_ids": [staff, everyone]});
    assert_eq!(
        post(&t, &g.path("/roles/reorder"), &g.owner, system)
            .await
            .0,
        403
    );
    let system = json!({"role_id": owner_role});
    assert_eq!(
        post(&t, &g.path("/roles/default"), &g.owner, system)
            .await
            .0,
        403
    );

    // A moderator who may manage workspace roles is still bound by rank.
    let body =
        json!({"name": "managers", "permissions": ["manage_workspace_roles"], "position": 50});
    let (status, managers) = post(&t, &g.path("/roles"), &g.owner, body).await;
    assert_eq!(status, 200, "{managers}");
    let managers = managers["role_id"].as_str().expect("id");
    assert_eq!(g.assign(&t, &g.owner, managers, &moderator).await, 200);
    let at = |position: i64| json!({"name": "ranked", "permissions": [], "position": position});
    assert_eq!(
        post(&t, &g.path("/roles"), &moderator, at(9999)).await.0,
        403
    );
    let moderator_path = g.path(&format!("/roles/{moderator_role}"));
    assert_eq!(
        patch(&t, &moderator_path, &moderator, json!({"name": "x"}))
            .await
            .0,
        403
    );
    assert_eq!(delete(&t, &staff_path, &moderator).await.0, 403);
    // …and may act below it: the default position is just below theirs.
    let (status, ranked) = post(
        &t,
        &g.path("/roles"),
        &moderator,
        json!({"name": "ranked", "permissions": []}),
    )
    .await;
    assert_eq!(
        (status, ranked["position"].as_i64()),
        (200, Some(99)),
        "{ranked}"
    );

    // The owner's view of the roles changed only by what was allowed.
    let after = g.roles(&t).await;
    let names = |roles: &Value| -> Vec<String> {
        roles["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .map(|r| r["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let mut expected = names(&before);
    expected.insert(1, "ranked".to_owned());
    expected.insert(1, "managers".to_owned());
    let mut got = names(&after);
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(after["default_join_role_id"], Value::Null);
    t.stack.stop().await.expect("clean shutdown");
}

/// Bad bodies and paths are refused with the status of PROTOCOL.md §2.8 and write
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_routes_reject_bad_input_and_write_nothing() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let g = Guild::new(&t).await;
    let staff = g.create_role(&t, "staff", json!(["create_message"])).await;
    let everyone = g.role_id(&t, "@everyone").await;
    let before = g.roles(&t).await;
    let o = &g.owner;
    let roles = g.path("/roles");

    let bad_creates = [
        (json!({"name": "x", "permissions": [], "extra": 1}), 422),
        (json!({"permissions": []}), 422),
        (json!({"name": "x"}), 422),
        (json!({"name": 7, "permissions": []}), 422),
        (json!({"name": "x", "permissions": "create_message"}), 422),
        (json!({"name": "x".repeat(33), "permissions": []}), 400),
        (json!({"name": "   ", "permissions": []}), 400),
        (json!({"name": "a\u{1}b", "permissions": []}), 400),
        (json!({"name": "@Everyone", "permissions": []}), 400),
        (json!({"name": "WORKSPACE_OWNER", "permissions": []}), 400),
        (json!({"name": "x", "permissions": ["fly"]}), 400),
        (json!({"name": "x", "permissions": ["Create_Message"]}), 400),
        (
            json!({"name": "x", "permissions": [], "color_hex": "red"}),
            400,
        ),
        (
            json!({"name": "x", "permissions": [], "color_hex": "#12345"}),
            400,
        ),
        (json!({"name": "x", "permissions": [], "position": 0}), 400),
        (json!({"name": "x", "permissions": [], "position": -1}), 400),
    ];
    for (body, status) in bad_creates {
        assert_eq!(post(&t, &roles, o, body.clone()).await.0, status, "{body}");
    }
    assert_eq!(
        raw(&t, Method::POST, &roles, &o.token, "{\"name\":").await,
        400
    );

    let staff_path = g.path(&format!("/roles/{staff}"));
    let bad_updates = [
        (json!({}), 400),
        (json!({"name": null}), 400),
        (json!({"nickname": "x"}), 422),
        (json!({"name": ["x"]}), 422),
        (json!({"name": "y".repeat(33)}), 400),
        (json!({"permissions": ["nope"]}), 400),
        (json!({"color_hex": "#GGGGGG"}), 400),
        // One bad field fails the whole update.
        (json!({"name": "fine", "color_hex": "bad"}), 400),
    ];
    for (body, status) in bad_updates {
        assert_eq!(
            patch(&t, &staff_path, o, body.clone()).await.0,
            status,
            "{body}"
        );
    }
    assert_eq!(
        raw(&t, Method::PATCH, &staff_path, &o.token, "[").await,
        400
    );
    assert_eq!(
        patch(&t, &g.path("/roles/not-a-ulid"), o, json!({"name": "x"}))
            .await
            .0,
        400
    );

    let reorder = g.path("/roles/reorder");
    let unknown = ulid::Ulid::generate().to_string();
    let too_many: Vec<String> = (0..65)
        .map(|_| ulid::Ulid::generate().to_string())
        .collect();
    let bad_reorders = [
        (json!({"role_ids": []}), 400),
        (json!({"role_ids": [staff, staff]}), 400),
        (json!({"role_ids": [unknown]}), 400),
        (json!({"role_ids": ["nope"]}), 400),
        (json!({"role_ids": too_many}), 400),
        (json!({"ids": [staff]}), 422),
        (json!({"role_ids": staff}), 422),
    ];
    for (body, status) in bad_reorders {
        assert_eq!(
            post(&t, &reorder, o, body.clone()).await.0,
            status,
            "{body}"
        );
    }
    let default = g.path("/roles/default");
    assert_eq!(
        post(&t, &default, o, json!({"role_id": unknown})).await.0,
        400
    );
    assert_eq!(
        post(&t, &default, o, json!({"role_id": "nope"})).await.0,
        400
    );
    assert_eq!(post(&t, &default, o, json!({"role_id": 5})).await.0, 422);

    let assign = |role: &str, user: &str| g.path(&format!("/roles/{role}/members/{user}"));
    assert_eq!(
        post(&t, &assign(&everyone, &g.member.id), o, json!(null))
            .await
            .0,
        400
    );
    assert_eq!(
        post(&t, &assign(&staff, "nope"), o, json!(null)).await.0,
        400
    );
    assert_eq!(
        post(&t, &assign(&unknown, &g.member.id), o, json!(null))
            .await
            .0,
        404
    );
    let stranger = ulid::Ulid::generate().to_string();
    assert_eq!(
        post(&t, &assign(&staff, &stranger), o, json!(null)).await.0,
        404
    );
    assert_eq!(delete(&t, &assign(&staff, &stranger), o).await.0, 404);

    assert_eq!(g.roles(&t).await, before, "nothing was written");
    let (_, members) = get(&t, &g.path("/members"), o).await;
    if let Some(members) = members["members"].as_array() {
        let member = members
            .iter()
            .find(|m| m["user_id"] == g.member.id.as_str());
        assert_eq!(member.map(|m| m["role_ids"].clone()), Some(json!([])));
    }

    // The default join role: set, read back, cleared.
    assert_eq!(
        post(&t, &default, o, json!({"role_id": staff})).await.0,
        200
    );
    assert_eq!(g.roles(&t).await["default_join_role_id"], staff.as_str());
    assert_eq!(post(&t, &default, o, json!({"role_id": null})).await.0, 200);
    assert_eq!(g.roles(&t).await["default_join_role_id"], Value::Null);
    // Only the two accepted changes were audited.
    assert_eq!(
        audit_actions(&t, &g, "role.default_join").await,
        ["role.default_join.update", "role.default_join.update"]
    );
    t.stack.stop().await.expect("clean shutdown");
}

/// 64 roles per guild and 16 assignments per member; past that, 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_and_assignment_caps_are_409() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let g = Guild::new(&t).await;
    let mut created = Vec::new();
    for n in 0..60 {
        created.push(g.create_role(&t, &format!("role {n}"), json!([])).await);
    }
    let (status, body) = post(
        &t,
        &g.path("/roles"),
        &g.owner,
        json!({"name": "65th", "permissions": []}),
    )
    .await;
    assert_eq!((status, body), (409, json!({"error": "quota_exceeded"})));
    assert_eq!(
        g.roles(&t).await["roles"].as_array().map(Vec::len),
        Some(64)
    );

    for role in &created[..16] {
        assert_eq!(g.assign(&t, &g.owner, role, &g.member).await, 200);
    }
    assert_eq!(g.assign(&t, &g.owner, &created[16], &g.member).await, 409);
    // Re-assigning a held role is not a new assignment.
    assert_eq!(g.assign(&t, &g.owner, &created[0], &g.member).await, 200);
    t.stack.stop().await.expect("clean shutdown");
}

// --- overrides -------------------------------------------------------------------

/// Both override routes: events to the guild, refusals, bad input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_routes_announce_refuse_and_validate() {
    let t = TestStack::start(Backends::Embedded, 2)
        .await
        .expect("embedded");
    let g = Guild::new(&t).await;
    let moderator = g.moderator(&t).await;
    let mut outsider = Outsider::new(&t, 1).await;
    let mut a = t.connect(0, &g.owner).await;
    let mut m = t.connect(1, &moderator).await;
    subscribed(&mut a, &g.id, &g.general).await;
    subscribed(&mut m, &g.id, &g.general).await;
    let legacy = |role: &str| g.path(&format!("/channels/{}/overrides/{role}", g.general));
    let targeted = |kind: &str, id: &str| {
        g.path(&format!(
            "/channels/{}/permission-overrides/{kind}/{id}",
            g.general
        ))
    };

    let body = json!({"allow": ["publish_video"], "deny": ["delete_message"]});
    let (status, ack) = post(&t, &legacy("moderator"), &g.owner, body).await;
    assert_eq!((status, ack), (200, json!({"accepted": true})));
    for socket in [&mut a, &mut m] {
        let d = expect_event(socket, "workspace_channel_role_override_update").await;
        assert_eq!(
            (d["channel_id"].as_str(), d["role"].as_str()),
            (Some(g.general.as_str()), Some("moderator"))
        );
        assert_eq!(
            d["updated_fields"],
            json!({"allow": ["publish_video"], "deny": ["delete_message"]})
        );
        assert_eq!(d["actor_user_id"], g.owner.id.as_str());
    }
    // It applies at once: the moderator lost delete_message in this channel.
    let self_path = g.path(&format!("/channels/{}/permissions/self", g.general));
    let (_, own) = get(&t, &self_path, &moderator).await;
    assert_eq!(own["role"], "moderator");
    let own: Vec<&str> = own["permissions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !own.contains(&"delete_message") && own.contains(&"publish_video"),
        "{own:?}"
    );

    // The targeted route: a member target, then a role target by ULID
    // (which the web client ignores, but the event is still sent).
    let body = json!({"allow": [], "deny": ["publish_screen_share"]});
    let (status, _) = post(&t, &targeted("member", &g.member.id), &moderator, body).await;
    assert_eq!(status, 200);
    for socket in [&mut a, &mut m] {
        let d = expect_event(socket, "workspace_channel_permission_override_update").await;
        assert_eq!(
            (d["target_kind"].as_str(), d["target_id"].as_str()),
            (Some("member"), Some(g.member.id.as_str()))
        );
        assert_eq!(
            d["updated_fields"],
            json!({"allow": [], "deny": ["publish_screen_share"]})
        );
    }
    let staff = g.create_role(&t, "staff", json!([])).await;
    for socket in [&mut a, &mut m] {
        expect_event(socket, "workspace_role_create").await;
    }
    let body = json!({"allow": ["publish_video"], "deny": []});
    assert_eq!(
        post(&t, &targeted("role", &staff), &g.owner, body).await.0,
        200
    );
    for socket in [&mut a, &mut m] {
        let d = expect_event(socket, "workspace_channel_permission_override_update").await;
        assert_eq!(
            (d["target_kind"].as_str(), d["target_id"].as_str()),
            (Some("role"), Some(staff.as_str()))
        );
    }

    // Refusals: the legacy route is for legacy owners; the targeted one
    // needs channel-level manage_channel_overrides.
    let fine = json!({"allow": [], "deny": []});
    assert_eq!(
        post(&t, &legacy("member"), &moderator, fine.clone())
            .await
            .0,
        403
    );
    assert_eq!(
        post(
            &t,
            &targeted("member", &moderator.id),
            &g.member,
            fine.clone()
        )
        .await
        .0,
        403
    );
    let outsider_user = &outsider.user;
    assert_eq!(
        post(&t, &legacy("member"), outsider_user, fine.clone())
            .await
            .0,
        403
    );

    // Bad input.
    let unknown = ulid::Ulid::generate().to_string();
    let bad = [
        (legacy("admin"), fine.clone(), 400),
        (
            legacy("member"),
            json!({"allow": ["create_message"], "deny": ["create_message"]}),
            400,
        ),
        (legacy("member"), json!({"allow": ["fly"], "deny": []}), 400),
        (legacy("member"), json!({"allow": []}), 422),
        (
            legacy("member"),
            json!({"allow": [], "deny": [], "extra": true}),
            422,
        ),
        (
            legacy("member"),
            json!({"allow": "create_message", "deny": []}),
            422,
        ),
        (targeted("group", &g.member.id), fine.clone(), 400),
        (targeted("member", "nope"), fine.clone(), 400),
        (targeted("member", &unknown), fine.clone(), 404),
        (targeted("role", &unknown), fine.clone(), 404),
        (
            g.path(&format!("/channels/{unknown}/overrides/member")),
            fine.clone(),
            404,
        ),
    ];
    for (path, body, status) in bad {
        assert_eq!(
            post(&t, &path, &g.owner, body.clone()).await.0,
            status,
            "{path} {body}"
        );
    }
    // Nothing changed: the moderator's view is as before.
    let (_, again) = get(&t, &self_path, &moderator).await;
    let again: Vec<&str> = again["permissions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(again, own);
    assert_eq!(
        audit_actions(&t, &g, "channel.").await,
        [
            "channel.permission_override.update",
            "channel.permission_override.update",
            "channel.override.update",
        ]
    );

    outsider.saw_nothing_else(&t).await;
    t.stack.stop().await.expect("clean shutdown");
}

// --- guild settings --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guild_settings_update_announces_only_changes() {
    let t = TestStack::start(Backends::Embedded, 2)
        .await
        .expect("embedded");
    let g = Guild::new(&t).await;
    let moderator = g.moderator(&t).await;
    let mut outsider = Outsider::new(&t, 0).await;
    let mut a = t.connect(0, &g.owner).await;
    let mut b = t.connect(1, &g.member).await;
    subscribed(&mut a, &g.id, &g.general).await;
    subscribed(&mut b, &g.id, &g.general).await;
    let path = g.path("");

    let (status, guild) = patch(
        &t,
        &path,
        &g.owner,
        json!({"name": "Renamed", "visibility": "public"}),
    )
    .await;
    assert_eq!(status, 200, "{guild}");
    assert_eq!(
        guild,
        json!({"guild_id": g.id, "name": "Renamed", "visibility": "public"})
    );
    for socket in [&mut a, &mut b] {
        let d = expect_event(socket, "workspace_update").await;
        assert_eq!(
            d["updated_fields"],
            json!({"name": "Renamed"}),
            "visibility did not change"
        );
        assert_eq!(d["actor_user_id"], g.owner.id.as_str());
    }
    // No change, no event: the next frame is a message.
    assert_eq!(
        patch(&t, &path, &g.owner, json!({"visibility": "public"}))
            .await
            .0,
        200
    );
    let message = g.say(&t, &g.owner, &g.general, "after").await;
    for socket in [&mut a, &mut b] {
        let d = expect_event(socket, "message_create").await;
        assert_eq!(d["message_id"], message["message_id"]);
    }

    // manage_roles is the owner's alone by default.
    assert_eq!(
        patch(&t, &path, &moderator, json!({"name": "Mine"}))
            .await
            .0,
        403
    );
    assert_eq!(
        patch(&t, &path, &g.member, json!({"name": "Mine"})).await.0,
        403
    );
    assert_eq!(
        patch(&t, &path, &outsider.user, json!({"name": "Mine"}))
            .await
            .0,
        403
    );
    let bad = [
        (json!({}), 400),
        (json!({"name": "x".repeat(65)}), 400),
        (json!({"name": "tab\there"}), 400),
        (json!({"visibility": "secret"}), 400),
        (json!({"name": "x", "topic": "y"}), 422),
        (json!({"name": 5}), 422),
    ];
    for (body, status) in bad {
        assert_eq!(
            patch(&t, &path, &g.owner, body.clone()).await.0,
            status,
            "{body}"
        );
    }
    let (_, guilds) = get(&t, "/guilds", &g.owner).await;
    let listed = guilds["guilds"]
        .as_array()
        .expect("guilds")
        .iter()
        .find(|x| x["guild_id"] == g.id.as_str())
        .cloned();
    assert_eq!(listed, Some(guild), "nothing else was written");

    outsider.saw_nothing_else(&t).await;
    t.stack.stop().await.expect("clean shutdown");
}

// --- channels --------------------------------------------------------------------

/// Rename, delete, the channel list and `permissions/self`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_rename_delete_list_and_own_permissions() {
    let t = TestStack::start(Backends::Embedded, 2)
        .await
        .expect("embedded");
    let g = Guild::new(&t).await;
    let moderator = g.moderator(&t).await;
    let mut outsider = Outsider::new(&t, 0).await;
    let doomed = g.channel(&t, "doomed").await;
    let hidden = g.channel(&t, "hidden").await;
    let member_role = g.role_id(&t, "member").await;
    g.override_for(
        &t,
        &hidden,
        &format!("role/{member_role}"),
        json!([]),
        json!(["create_message"]),
    )
    .await;
    let mut a = t.connect(0, &g.owner).await;
    let mut b = t.connect(1, &g.member).await;
    subscribed(&mut a, &g.id, &g.general).await;
    subscribed(&mut b, &g.id, &g.general).await;
    // Channel updates go to the channel's subscribers, who may view it.
    subscribed(&mut a, &g.id, &doomed).await;
    subscribed(&mut b, &g.id, &doomed).await;

    // Lists are filtered by channel-level create_message, in creation order.
    let names = |list: &Value| -> Vec<String> {
        list["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let (_, list) = get(&t, &g.path("/channels"), &g.owner).await;
    assert_eq!(names(&list), ["general", "doomed", "hidden"]);
    let (_, list) = get(&t, &g.path("/channels"), &g.member).await;
    assert_eq!(names(&list), ["general", "doomed"]);
    assert_eq!(get(&t, &g.path("/channels"), &outsider.user).await.0, 403);

    // permissions/self: the legacy role and the channel-level bits.
    let own = |channel: &str| g.path(&format!("/channels/{channel}/permissions/self"));
    let (status, body) = get(&t, &own(&g.general), &g.member).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"role": "member", "permissions": ["create_message", "subscribe_streams"]})
        )
    );
    let (_, body) = get(&t, &own(&hidden), &g.owner).await;
    assert_eq!(body["role"], "owner");
    assert_eq!(body["permissions"].as_array().map(Vec::len), Some(12));
    let (_, body) = get(&t, &own(&g.general), &moderator).await;
    assert_eq!(body["role"], "moderator");
    assert_eq!(body["permissions"].as_array().map(Vec::len), Some(10));
    assert_eq!(get(&t, &own(&hidden), &g.member).await.0, 403);
    let unknown = ulid::Ulid::generate().to_string();
    assert_eq!(get(&t, &own(&unknown), &g.member).await.0, 404);
    assert_eq!(get(&t, &own("nope"), &g.member).await.0, 400);

    // Rename: the event carries the new name, to the channel's subscribers.
    let doomed_path = g.path(&format!("/channels/{doomed}"));
    let (status, channel) = patch(&t, &doomed_path, &moderator, json!({"name": "renamed"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        channel,
        json!({"channel_id": doomed, "name": "renamed", "kind": "text"})
    );
    for socket in [&mut a, &mut b] {
        let d = expect_event(socket, "channel_update").await;
        assert_eq!(d["channel_id"], doomed.as_str());
        assert_eq!(d["updated_fields"], json!({"name": "renamed"}));
        assert_eq!(d["actor_user_id"], moderator.id.as_str());
    }
    // Renaming a channel the member cannot view tells them nothing: the
    // next thing they hear is a later message in a channel they can see.
    let hidden_path = g.path(&format!("/channels/{hidden}"));
    let (status, _) = patch(&t, &hidden_path, &g.owner, json!({"name": "secret plans"})).await;
    assert_eq!(status, 200);
    let sentinel = g
        .say(&t, &g.owner, &g.general, "after the secret rename")
        .await;
    for socket in [&mut a, &mut b] {
        let d = expect_event(socket, "message_create").await;
        assert_eq!(d["message_id"], sentinel["message_id"]);
    }
    assert_eq!(
        patch(&t, &doomed_path, &g.member, json!({"name": "mine"}))
            .await
            .0,
        403
    );
    let bad = [
        (json!({}), 400),
        (json!({"name": ""}), 400),
        (json!({"name": "x".repeat(65)}), 400),
        (json!({"name": "x", "kind": "voice"}), 422),
        (json!({"name": false}), 422),
    ];
    for (body, status) in bad {
        assert_eq!(
            patch(&t, &doomed_path, &g.owner, body.clone()).await.0,
            status,
            "{body}"
        );
    }
    assert_eq!(
        patch(
            &t,
            &g.path(&format!("/channels/{unknown}")),
            &g.owner,
            json!({"name": "x"})
        )
        .await
        .0,
        404
    );
    let (_, list) = get(&t, &g.path("/channels"), &g.owner).await;
    assert_eq!(
        names(&list),
        ["general", "renamed", "secret plans"],
        "bad renames wrote nothing"
    );

    // Delete: members may not; the owner may, once, content and all.
    let doomed_message = g.say(&t, &g.owner, &doomed, "bye").await;
    let message_id = doomed_message["message_id"].as_str().expect("id");
    let reaction = g.path(&format!(
        "/channels/{doomed}/messages/{message_id}/reactions/%F0%9F%91%8D"
    ));
    assert_eq!(post(&t, &reaction, &g.member, json!(null)).await.0, 200);
    assert_eq!(delete(&t, &doomed_path, &g.member).await.0, 403);
    let (status, body) = delete(&t, &doomed_path, &g.owner).await;
    assert_eq!((status, body), (204, Value::Null));
    for socket in [&mut a, &mut b] {
        expect_event(socket, "message_create").await;
        expect_event(socket, "message_reaction").await;
        let d = expect_event(socket, "channel_delete").await;
        assert_eq!(
            (d["channel_id"].as_str(), d["actor_user_id"].as_str()),
            (Some(doomed.as_str()), Some(g.owner.id.as_str()))
        );
    }
    assert_eq!(delete(&t, &doomed_path, &g.owner).await.0, 404);
    let history = g.path(&format!("/channels/{doomed}/messages"));
    assert_eq!(get(&t, &history, &g.owner).await.0, 404);
    let (_, list) = get(&t, &g.path("/channels"), &g.owner).await;
    assert_eq!(names(&list), ["general", "secret plans"]);

    outsider.saw_nothing_else(&t).await;
    t.stack.stop().await.expect("clean shutdown");
}

// --- teardown across gateways ----------------------------------------------------

/// The owner is on gateway 0, the member on gateway 1, subscribed to the
/// channel that is about to be hidden and to a sentinel channel they keep.
struct Teardown {
    g: Guild,
    owner: Socket,
    member: Socket,
    sentinel: String,
}

impl Teardown {
    async fn new(t: &TestStack, g: Guild, hidden: &str) -> Self {
        let sentinel = g.channel(t, "sentinel").await;
        let mut owner = t.connect(0, &g.owner).await;
        let mut member = t.connect(1, &g.member).await;
        subscribed(&mut owner, &g.id, hidden).await;
        subscribed(&mut member, &g.id, hidden).await;
        subscribed(&mut member, &g.id, &sentinel).await;
        Self {
            g,
            owner,
            member,
            sentinel,
        }
    }

    /// After the change: a message in `hidden` reaches the owner, and the
    /// member's next message is the sentinel, so the hidden one never came.
    /// A new subscribe to `hidden` is ignored, and REST agrees.
    async fn member_lost(&mut self, t: &TestStack, hidden: &str) {
        let g = &self.g;
        let secret = g.say(t, &g.owner, hidden, "secret").await;
        let d = expect_event(&mut self.owner, "message_create").await;
        assert_eq!(d["message_id"], secret["message_id"]);
        let sentinel = g.say(t, &g.owner, &self.sentinel, "sentinel").await;
        let d = expect_event(&mut self.member, "message_create").await;
        assert_eq!(
            d["message_id"], sentinel["message_id"],
            "the hidden message leaked"
        );

        self.member.subscribe(&g.id, hidden).await;
        subscribed(&mut self.member, &g.id, &self.sentinel).await;
        let history = g.path(&format!("/channels/{hidden}/messages"));
        assert_eq!(get(t, &history, &g.member).await.0, 403);
        let (_, list) = get(t, &g.path("/channels"), &g.member).await;
        assert!(!list.to_string().contains(hidden), "{list}");
    }

    /// The member still gets messages in `channel`.
    async fn member_kept(&mut self, t: &TestStack, channel: &str) {
        let g = &self.g;
        let message = g.say(t, &g.owner, channel, "still here").await;
        let d = expect_event(&mut self.member, "message_create").await;
        assert_eq!(d["message_id"], message["message_id"]);
    }
}

/// The web client's legacy override, denying create_message to `member` on
/// a channel, drops the member's subscription on the other gateway before
/// the REST call returns (the reference server did not apply it at all on
/// Postgres until a restart).
async fn legacy_override_hides_a_channel_at_once(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let g = Guild::new(&t).await;
    let hidden = g.general.clone();
    let mut td = Teardown::new(&t, g, &hidden).await;
    let path = td.g.path(&format!("/channels/{hidden}/overrides/member"));
    let body = json!({"allow": [], "deny": ["create_message"]});
    assert_eq!(post(&t, &path, &td.g.owner, body).await.0, 200);
    expect_event(&mut td.owner, "workspace_channel_role_override_update").await;
    expect_event(&mut td.member, "workspace_channel_role_override_update").await;
    td.member_lost(&t, &hidden).await;

    // Lifting the override lets the member back in.
    let body = json!({"allow": [], "deny": []});
    assert_eq!(post(&t, &path, &td.g.owner, body).await.0, 200);
    expect_event(&mut td.owner, "workspace_channel_role_override_update").await;
    expect_event(&mut td.member, "workspace_channel_role_override_update").await;
    subscribed(&mut td.member, &td.g.id, &hidden).await;
    td.member_kept(&t, &hidden).await;
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_legacy_override_hides_a_channel_at_once() {
    legacy_override_hides_a_channel_at_once(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_legacy_override_hides_a_channel_at_once() {
    legacy_override_hides_a_channel_at_once(Backends::External).await;
}

/// A member override on the targeted route hides the channel from that
/// member only.
async fn member_override_hides_a_channel_at_once(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let g = Guild::new(&t).await;
    let hidden = g.general.clone();
    let mut td = Teardown::new(&t, g, &hidden).await;
    let target = format!("member/{}", td.g.member.id);
    td.g.override_for(&t, &hidden, &target, json!([]), json!(["create_message"]))
        .await;
    expect_event(
        &mut td.owner,
        "workspace_channel_permission_override_update",
    )
    .await;
    expect_event(
        &mut td.member,
        "workspace_channel_permission_override_update",
    )
    .await;
    td.member_lost(&t, &hidden).await;
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_member_override_hides_a_channel_at_once() {
    member_override_hides_a_channel_at_once(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_member_override_hides_a_channel_at_once() {
    member_override_hides_a_channel_at_once(Backends::External).await;
}

/// A staff-only channel: @everyone is denied, `staff` allowed. Returns the
/// channel and the staff role, with the member holding it.
async fn staff_channel(t: &TestStack, g: &Guild) -> (String, String) {
    let channel = g.channel(t, "staff-only").await;
    let everyone = g.role_id(t, "@everyone").await;
    let staff = g.create_role(t, "staff", json!([])).await;
    g.override_for(
        t,
        &channel,
        &format!("role/{everyone}"),
        json!([]),
        json!(["create_message"]),
    )
    .await;
    g.override_for(
        t,
        &channel,
        &format!("role/{staff}"),
        json!(["create_message"]),
        json!([]),
    )
    .await;
    assert_eq!(g.assign(t, &g.owner, &staff, &g.member).await, 200);
    (channel, staff)
}

/// Taking a role away hides what only that role allowed, on the other
/// gateway, before the call returns.
async fn role_removal_hides_a_channel_at_once(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let g = Guild::new(&t).await;
    let (hidden, staff) = staff_channel(&t, &g).await;
    let mut td = Teardown::new(&t, g, &hidden).await;
    td.member_kept(&t, &hidden).await;
    expect_event(&mut td.owner, "message_create").await;
    let path =
        td.g.path(&format!("/roles/{staff}/members/{}", td.g.member.id));
    assert_eq!(delete(&t, &path, &td.g.owner).await.0, 200);
    expect_event(&mut td.owner, "workspace_role_assignment_remove").await;
    expect_event(&mut td.member, "workspace_role_assignment_remove").await;
    td.member_lost(&t, &hidden).await;
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_role_removal_hides_a_channel_at_once() {
    role_removal_hides_a_channel_at_once(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_role_removal_hides_a_channel_at_once() {
    role_removal_hides_a_channel_at_once(Backends::External).await;
}

/// Deleting the role does the same.
async fn role_deletion_hides_a_channel_at_once(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let g = Guild::new(&t).await;
    let (hidden, staff) = staff_channel(&t, &g).await;
    let mut td = Teardown::new(&t, g, &hidden).await;
    assert_eq!(
        delete(&t, &td.g.path(&format!("/roles/{staff}")), &td.g.owner)
            .await
            .0,
        200
    );
    expect_event(&mut td.owner, "workspace_role_delete").await;
    expect_event(&mut td.member, "workspace_role_delete").await;
    td.member_lost(&t, &hidden).await;
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_role_deletion_hides_a_channel_at_once() {
    role_deletion_hides_a_channel_at_once(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_role_deletion_hides_a_channel_at_once() {
    role_deletion_hides_a_channel_at_once(Backends::External).await;
}

/// A role permission update re-checks everyone, and keeps what is still
/// allowed: the member's subscriptions survive a change that does not hide
/// anything. (Only the server owner can take create_message from
/// @everyone, so a permission update that hides a channel is proved on the
/// authorizer itself, in `permissions::tests::evaluation`.)
async fn role_permission_update_keeps_what_is_still_allowed(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let g = Guild::new(&t).await;
    let (kept, staff) = staff_channel(&t, &g).await;
    let mut td = Teardown::new(&t, g, &kept).await;
    let member_role = td.g.role_id(&t, "member").await;
    for role in [&member_role, &staff] {
        let path = td.g.path(&format!("/roles/{role}"));
        let (status, _) = patch(&t, &path, &td.g.owner, json!({"permissions": []})).await;
        assert_eq!(status, 200);
        expect_event(&mut td.owner, "workspace_role_update").await;
        expect_event(&mut td.member, "workspace_role_update").await;
    }
    td.member_kept(&t, &kept).await;
    let sentinel = td.sentinel.clone();
    td.member_kept(&t, &sentinel).await;
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_role_permission_update_keeps_what_is_still_allowed() {
    role_permission_update_keeps_what_is_still_allowed(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_role_permission_update_keeps_what_is_still_allowed() {
    role_permission_update_keeps_what_is_still_allowed(Backends::External).await;
}

/// A deleted channel is announced, and its subscriptions are gone: a member
/// whose only subscription in the guild was that channel is no longer
/// present there, so the guild's next event does not reach them (their own
/// guild's sentinel does), and a new subscribe to it is ignored.
async fn channel_deletion_drops_its_subscriptions(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let g = Guild::new(&t).await;
    let doomed = g.channel(&t, "doomed").await;
    let (own_guild, own_channel) = t.guild_with_channel(&g.member, "private").await;
    let mut owner = t.connect(0, &g.owner).await;
    subscribed(&mut owner, &g.id, &g.general).await;
    // Channel events go to the channel's subscribers, who may view it.
    subscribed(&mut owner, &g.id, &doomed).await;
    let mut member = t.connect(1, &g.member).await;
    subscribed(&mut member, &g.id, &doomed).await;
    subscribed(&mut member, &own_guild, &own_channel).await;
    // The channel goes with its messages.
    let last = g.say(&t, &g.owner, &doomed, "last words").await;
    for socket in [&mut owner, &mut member] {
        let d = expect_event(socket, "message_create").await;
        assert_eq!(d["message_id"], last["message_id"]);
    }

    let (status, _) = delete(&t, &g.path(&format!("/channels/{doomed}")), &g.owner).await;
    assert_eq!(status, 204);
    for socket in [&mut owner, &mut member] {
        let d = expect_event(socket, "channel_delete").await;
        assert_eq!(d["channel_id"], doomed.as_str());
    }
    assert_eq!(
        patch(&t, &g.path(""), &g.owner, json!({"name": "After"}))
            .await
            .0,
        200
    );
    expect_event(&mut owner, "workspace_update").await;
    member.subscribe(&g.id, &doomed).await;
    let path = format!("/guilds/{own_guild}/channels/{own_channel}/messages");
    let (status, sentinel) = post(&t, &path, &g.member, json!({"content": "sentinel"})).await;
    assert_eq!(status, 200);
    let d = expect_event(&mut member, "message_create").await;
    assert_eq!(
        d["message_id"], sentinel["message_id"],
        "the guild event leaked"
    );
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_channel_deletion_drops_its_subscriptions() {
    channel_deletion_drops_its_subscriptions(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_channel_deletion_drops_its_subscriptions() {
    channel_deletion_drops_its_subscriptions(Backends::External).await;
}
