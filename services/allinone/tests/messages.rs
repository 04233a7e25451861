//! After a message is posted: edits, deletes, reactions and attachments,
//! end to end. Every route gets its happy path, a refusal for a caller
//! without the permission, and bad input that writes nothing; every event
//! reaches the channel's subscribers on both gateways and nobody else.
//! Also the history a reconnecting client reads forward with `after`.

mod support;

use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Backends, Socket, TestStack, User, percent_encode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const MIB: usize = 1024 * 1024;

/// A PNG as far as sniffing goes: the signature, then filler.
fn png(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..len.saturating_sub(8)).map(|i| (i % 251) as u8));
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn upload(
    t: &TestStack,
    path: &str,
    token: &str,
    query: &str,
    content_type: Option<&str>,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let mut request = t.http.post(t.api(&format!("{path}{query}"))).body(bytes);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    t.send(request, Some(token)).await
}

/// Files under the stack's attachment root (staged and committed).
fn stored_files(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["staging", "objects"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            files.extend(
                entries.map(|e| format!("{dir}/{}", e.expect("dir entry").file_name().display())),
            );
        }
    }
    files.sort();
    files
}

/// The next `message_*` frame; other areas' events (presence, voice) that
/// may be interleaved are not this file's business.
async fn next_message_event(socket: &mut Socket) -> Value {
    loop {
        let frame = socket.next_event().await;
        if frame["t"]
            .as_str()
            .is_some_and(|t| t.starts_with("message_"))
        {
            return frame;
        }
    }
}

/// Subscribes and waits for that subscription's acknowledgement.
async fn subscribe(socket: &mut Socket, guild: &str, channel: &str) {
    socket.subscribe(guild, channel).await;
    loop {
        let frame = socket.next_event().await;
        if frame["t"] == "subscribed" && frame["d"]["channel_id"] == channel {
            return;
        }
    }
}

/// A public guild with channels C and C2. The owner (gateway 0) and a
/// member (gateway 1) are subscribed to C; a bystander member to C2
/// (gateway 0); an outsider, refused C, to a channel of their own guild
/// (gateway 1).
struct Scene {
    t: TestStack,
    owner: User,
    member: User,
    bystander: User,
    outsider: User,
    guild: String,
    channel: String,
    other_channel: String,
    outsider_guild: String,
    outsider_channel: String,
    owner_socket: Socket,
    member_socket: Socket,
    bystander_socket: Socket,
    outsider_socket: Socket,
}

impl Scene {
    async fn start(backends: Backends) -> Option<Self> {
        let t = TestStack::start(backends, 2).await?;
        let (owner, member, bystander, outsider) = (
            t.user("owner").await,
            t.user("member").await,
            t.user("bystander").await,
            t.user("outsider").await,
        );
        let (guild, channel) = t.guild_with_channel(&owner, "public").await;
        let (status, other) = t
            .post(
                &format!("/guilds/{guild}/channels"),
                Some(&owner.token),
                json!({"name": "random"}),
            )
            .await;
        assert_eq!(status, 200, "{other}");
        let other_channel = other["channel_id"].as_str().expect("id").to_owned();
        for user in [&member, &bystander] {
            t.join(user, &guild).await;
        }
        let (outsider_guild, outsider_channel) = t.guild_with_channel(&outsider, "private").await;

        let mut owner_socket = t.connect(0, &owner).await;
        let mut member_socket = t.connect(1, &member).await;
        let mut bystander_socket = t.connect(0, &bystander).await;
        let mut outsider_socket = t.connect(1, &outsider).await;
        subscribe(&mut owner_socket, &guild, &channel).await;
        subscribe(&mut member_socket, &guild, &channel).await;
        subscribe(&mut bystander_socket, &guild, &other_channel).await;
        // Refused silently; the next acknowledgement is for its own channel.
        outsider_socket.subscribe(&guild, &channel).await;
        subscribe(&mut outsider_socket, &outsider_guild, &outsider_channel).await;
        Some(Self {
            t,
            owner,
            member,
            bystander,
            outsider,
            guild,
            channel,
            other_channel,
            outsider_guild,
            outsider_channel,
            owner_socket,
            member_socket,
            bystander_socket,
            outsider_socket,
        })
    }

    fn messages(&self) -> String {
        format!("/guilds/{}/channels/{}/messages", self.guild, self.channel)
    }

    fn attachments(&self) -> String {
        format!(
            "/guilds/{}/channels/{}/attachments",
            self.guild, self.channel
        )
    }

    async fn post_message(&self, user: &User, content: &str) -> Value {
        let (status, message) = self
            .t
            .post(
                &self.messages(),
                Some(&user.token),
                json!({"content": content}),
            )
            .await;
        assert_eq!(status, 200, "{message}");
        message
    }

    /// Posts in C as the member and expects it to be the next message
    /// event of both C sockets: proof that nothing else reached them first.
    async fn channel_sentinel(&mut self) {
        let member = self.member.clone();
        let sentinel = self.post_message(&member, "sentinel").await;
        for socket in [&mut self.owner_socket, &mut self.member_socket] {
            let frame = next_message_event(socket).await;
            assert_eq!(frame["t"], "message_create", "{frame}");
            assert_eq!(frame["d"]["message_id"], sentinel["message_id"], "{frame}");
        }
    }

    /// The bystander (C2) and the outsider (own guild) each get a message
    /// in their own channel as their next message event: proof that
    /// nothing from C reached them.
    async fn elsewhere_sentinels(&mut self) {
        let targets = [
            (
                &self.owner,
                &self.guild,
                &self.other_channel,
                &mut self.bystander_socket,
            ),
            (
                &self.outsider,
                &self.outsider_guild,
                &self.outsider_channel,
                &mut self.outsider_socket,
            ),
        ];
        for (author, guild, channel, socket) in targets {
            let (status, sentinel) = self
                .t
                .post(
                    &format!("/guilds/{guild}/channels/{channel}/messages"),
                    Some(&author.token),
                    json!({"content": "elsewhere"}),
                )
                .await;
            assert_eq!(status, 200, "{sentinel}");
            let frame = next_message_event(socket).await;
            assert_eq!(frame["t"], "message_create", "{frame}");
            assert_eq!(frame["d"]["message_id"], sentinel["message_id"], "{frame}");
        }
    }

    async fn history(&self, user: &User) -> Vec<Value> {
        let (status, page) = self.t.get(&self.messages(), Some(&user.token)).await;
        assert_eq!(status, 200, "{page}");
        page["messages"].as_array().expect("messages").clone()
    }

    async fn audit_actions(&self) -> Vec<Value> {
        let (status, page) = self
            .t
            .get(
                &format!("/guilds/{}/audit?action_prefix=message.", self.guild),
                Some(&self.owner.token),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        page["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| json!([e["action"], e["actor_user_id"], e["target_user_id"]]))
            .collect()
    }
}

// --- history -----------------------------------------------------------------

/// A client that reconnects asks for what came after the last message it
/// has: exactly the newer ones, oldest first, paged with `next_after` until
/// a page is empty. Pages without `after` keep their shape.
async fn history_after_a_message_pages_forward_oldest_first(backends: Backends) {
    let Some(t) = TestStack::start(backends, 1).await else {
        return;
    };
    let owner = t.user("owner").await;
    let (guild, channel) = t.guild_with_channel(&owner, "private").await;
    let messages = format!("/guilds/{guild}/channels/{channel}/messages");
    let mut posted = Vec::new();
    for i in 0..5 {
        let (status, message) = t
            .post(
                &messages,
                Some(&owner.token),
                json!({"content": format!("m{i}")}),
            )
            .await;
        assert_eq!(status, 200, "{message}");
        posted.push(message);
    }
    let id = |message: &Value| message["message_id"].as_str().expect("id").to_owned();

    let mut after = id(&posted[1]);
    let mut read = Vec::new();
    let mut pages = 0;
    loop {
        let (status, page) = t
            .get(
                &format!("{messages}?after={after}&limit=2"),
                Some(&owner.token),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let batch = page["messages"].as_array().expect("messages").clone();
        let Some(newest) = batch.last() else {
            assert_eq!(
                page,
                json!({"messages": [], "next_before": null, "next_after": null})
            );
            break;
        };
        assert_eq!(page["next_after"], newest["message_id"], "{page}");
        assert_eq!(page["next_before"], batch[0]["message_id"], "{page}");
        after = id(newest);
        read.extend(batch);
        pages += 1;
    }
    assert_eq!(read, posted[2..]);
    assert_eq!(pages, 2);

    // Without `after` there is no `next_after` at all.
    let (status, latest) = t
        .get(&format!("{messages}?limit=2"), Some(&owner.token))
        .await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(
        latest,
        json!({"messages": [posted[4], posted[3]], "next_before": posted[3]["message_id"]})
    );
    let before = format!("{messages}?before={}", id(&posted[1]));
    let (status, older) = t.get(&before, Some(&owner.token)).await;
    assert_eq!(status, 200, "{older}");
    assert_eq!(
        older,
        json!({"messages": [posted[0]], "next_before": posted[0]["message_id"]})
    );

    // A malformed `after` is refused like a malformed `before`, and so is
    // asking for both directions at once.
    let bad_request = (400, json!({"error": "invalid_request"}));
    let lowercase = id(&posted[1]).to_lowercase();
    for query in [
        format!("after={}&before={}", id(&posted[1]), id(&posted[3])),
        "after=not-a-ulid".to_owned(),
        format!("after={lowercase}"),
        "after=".to_owned(),
        format!("after={}&limit=0", id(&posted[1])),
        format!("after={}&limit=101", id(&posted[1])),
        "before=not-a-ulid".to_owned(),
    ] {
        let answer = t
            .get(&format!("{messages}?{query}"), Some(&owner.token))
            .await;
        assert_eq!(answer, bad_request, "{query}");
    }
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_history_after_a_message_pages_forward_oldest_first() {
    history_after_a_message_pages_forward_oldest_first(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_history_after_a_message_pages_forward_oldest_first() {
    history_after_a_message_pages_forward_oldest_first(Backends::External).await;
}

// --- edit and delete ---------------------------------------------------------

/// The author edits, a moderator (the owner) deletes: both subscribers of
/// C get `message_update` then `message_delete`, on either gateway; the
/// bystander in C2 and the outsider get neither. The moderator's delete is
/// audited, the author's edit is not.
async fn edits_and_deletes_reach_channel_subscribers_only(backends: Backends) {
    let Some(mut s) = Scene::start(backends).await else {
        return;
    };
    let member = s.member.clone();
    let original = s.post_message(&member, "first draft").await;
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        assert_eq!(next_message_event(socket).await["d"], original);
    }
    let id = original["message_id"].as_str().expect("id").to_owned();
    let path = format!("{}/{id}", s.messages());

    let (status, edited) =
        s.t.call(
            Method::PATCH,
            &path,
            Some(&member.token),
            Some(json!({"content": "final *words*"})),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["message_id"], original["message_id"]);
    assert_eq!(edited["content"], "final *words*");
    assert_eq!(edited["created_at_unix"], original["created_at_unix"]);
    assert_eq!(edited["attachments"], json!([]));
    assert_eq!(edited["reactions"], json!([]));
    assert!(
        edited["markdown_tokens"]
            .to_string()
            .contains("emphasis_start")
    );
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        let frame = next_message_event(socket).await;
        let updated_at = frame["d"]["updated_at_unix"].as_i64().expect("time");
        assert!(updated_at >= original["created_at_unix"].as_i64().expect("time"));
        assert_eq!(
            frame,
            json!({"v": 1, "t": "message_update", "d": {
                "guild_id": s.guild, "channel_id": s.channel, "message_id": id,
                "updated_fields": {
                    "content": "final *words*",
                    "markdown_tokens": edited["markdown_tokens"],
                },
                "updated_at_unix": updated_at,
            }})
        );
    }
    s.elsewhere_sentinels().await;
    assert_eq!(s.history(&s.bystander).await[0], edited);

    let owner = s.owner.clone();
    let (status, body) =
        s.t.call(Method::DELETE, &path, Some(&owner.token), None)
            .await;
    assert_eq!((status, body), (204, Value::Null));
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        let frame = next_message_event(socket).await;
        let deleted_at = frame["d"]["deleted_at_unix"].as_i64().expect("time");
        assert_eq!(
            frame,
            json!({"v": 1, "t": "message_delete", "d": {
                "guild_id": s.guild, "channel_id": s.channel, "message_id": id,
                "deleted_at_unix": deleted_at,
            }})
        );
    }
    s.elsewhere_sentinels().await;
    s.channel_sentinel().await;
    assert!(
        s.history(&owner)
            .await
            .iter()
            .all(|m| m["message_id"] != id.as_str())
    );
    let (status, _) =
        s.t.call(Method::DELETE, &path, Some(&owner.token), None)
            .await;
    assert_eq!(status, 404);

    assert_eq!(
        s.audit_actions().await,
        [json!(["message.delete.moderation", owner.id, member.id])]
    );
    s.t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_edits_and_deletes_reach_channel_subscribers_only() {
    edits_and_deletes_reach_channel_subscribers_only(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_edits_and_deletes_reach_channel_subscribers_only() {
    edits_and_deletes_reach_channel_subscribers_only(Backends::External).await;
}

/// Only the author, or a holder of `delete_message`, may edit or delete;
/// a moderator's edit is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_and_delete_need_the_author_or_delete_message() {
    let Some(mut s) = Scene::start(Backends::Embedded).await else {
        return;
    };
    let (owner, member, bystander, outsider) = (
        s.owner.clone(),
        s.member.clone(),
        s.bystander.clone(),
        s.outsider.clone(),
    );
    let message = s.post_message(&member, "mine").await;
    let path = format!(
        "{}/{}",
        s.messages(),
        message["message_id"].as_str().expect("id")
    );
    let edit = json!({"content": "not yours"});

    // A fellow member (no delete_message) and a stranger are refused.
    for (user, expected) in [(&bystander, 403), (&outsider, 403)] {
        let (status, body) =
            s.t.call(Method::PATCH, &path, Some(&user.token), Some(edit.clone()))
                .await;
        assert_eq!((status, body), (expected, json!({"error": "forbidden"})));
        let (status, body) =
            s.t.call(Method::DELETE, &path, Some(&user.token), None)
                .await;
        assert_eq!((status, body), (expected, json!({"error": "forbidden"})));
    }
    assert_eq!(s.history(&owner).await[0], message);

    // The owner holds delete_message: the edit stands and is audited.
    let (status, edited) =
        s.t.call(Method::PATCH, &path, Some(&owner.token), Some(edit))
            .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["content"], "not yours");
    assert_eq!(edited["author_id"], member.id.as_str());
    assert_eq!(
        s.audit_actions().await,
        [json!(["message.edit.moderation", owner.id, member.id])]
    );

    // The author deletes their own message: no audit entry.
    let (status, _) =
        s.t.call(Method::DELETE, &path, Some(&member.token), None)
            .await;
    assert_eq!(status, 204);
    assert_eq!(s.audit_actions().await.len(), 1);
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        assert_eq!(next_message_event(socket).await["t"], "message_create");
        assert_eq!(next_message_event(socket).await["t"], "message_update");
        assert_eq!(next_message_event(socket).await["t"], "message_delete");
    }
    s.t.stack.stop().await.expect("clean shutdown");
}

/// Malformed edits and deletes get their documented errors, change
/// nothing and publish nothing; so does an edit whose `message_update`
/// would not fit in a gateway frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_edits_and_deletes_write_nothing() {
    let Some(mut s) = Scene::start(Backends::Embedded).await else {
        return;
    };
    let member = s.member.clone();
    let message = s.post_message(&member, "keep me").await;
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        next_message_event(socket).await;
    }
    let id = message["message_id"].as_str().expect("id");
    let path = format!("{}/{id}", s.messages());
    let bad_request = json!({"error": "invalid_request"});

    // Markdown that expands: one long link definition used 300 times makes
    // a few hundred KiB of tokens out of under 2000 bytes.
    let amplifier = format!(
        "{}\n\n[a]: http://example.com/{}",
        "[a]".repeat(300),
        "x".repeat(1000)
    );
    assert!(amplifier.len() <= 2000);
    for (body, expected) in [
        (json!({"content": "x", "extra": 1}), 422),
        (json!({"content": 7}), 422),
        (json!({}), 422),
        (json!({"content": ""}), 400),
        (json!({"content": "x".repeat(2001)}), 400),
        (json!({"content": amplifier}), 400),
    ] {
        let (status, error) =
            s.t.call(
                Method::PATCH,
                &path,
                Some(&member.token),
                Some(body.clone()),
            )
            .await;
        assert_eq!((status, &error), (expected, &bad_request), "{body}");
    }
    let (status, error) =
        s.t.call_raw(
            Method::PATCH,
            &path,
            Some(&member.token),
            "{\"content\":".to_owned(),
        )
        .await;
    assert_eq!((status, error), (400, bad_request.clone()));

    let unknown = format!("{}/{}", s.messages(), ulid::Ulid::generate());
    let elsewhere = format!(
        "/guilds/{}/channels/{}/messages/{id}",
        s.guild, s.other_channel
    );
    for (method, target, expected) in [
        (Method::PATCH, format!("{}/not-a-ulid", s.messages()), 400),
        (Method::DELETE, format!("{}/not-a-ulid", s.messages()), 400),
        (Method::PATCH, unknown.clone(), 404),
        (Method::DELETE, unknown, 404),
        (Method::PATCH, elsewhere.clone(), 404),
        (Method::DELETE, elsewhere, 404),
    ] {
        let body = (method == Method::PATCH).then(|| json!({"content": "moved"}));
        let (status, _) =
            s.t.call(method.clone(), &target, Some(&member.token), body)
                .await;
        assert_eq!(status, expected, "{method} {target}");
    }

    assert_eq!(s.history(&member).await[0], message);
    s.channel_sentinel().await;
    s.t.stack.stop().await.expect("clean shutdown");
}

// --- reactions ---------------------------------------------------------------

/// Reactions reach C's subscribers on both gateways as `message_reaction`
/// (schema 2: operation and actor), only when something changed; history
/// shows each caller their own `reacted_by_me`.
async fn reactions_reach_channel_subscribers_only(backends: Backends) {
    let Some(mut s) = Scene::start(backends).await else {
        return;
    };
    let (owner, member) = (s.owner.clone(), s.member.clone());
    let message = s.post_message(&owner, "react to this").await;
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        next_message_event(socket).await;
    }
    let id = message["message_id"].as_str().expect("id");
    let thumbs = format!("{}/{id}/reactions/{}", s.messages(), percent_encode("👍"));

    let (status, reaction) =
        s.t.call(Method::POST, &thumbs, Some(&member.token), None)
            .await;
    assert_eq!(status, 200, "{reaction}");
    assert_eq!(
        reaction,
        json!({"emoji": "👍", "count": 1, "reacted_by_me": true, "reactor_user_ids": [member.id]})
    );
    let expected_add = |count: i64, actor: &User| {
        json!({"v": 1, "t": "message_reaction", "d": {
            "guild_id": s.guild, "channel_id": s.channel, "message_id": id,
            "emoji": "👍", "count": count, "operation": "add", "actor_user_id": actor.id,
        }})
    };
    let first = expected_add(1, &member);
    let second = expected_add(2, &owner);
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        assert_eq!(next_message_event(socket).await, first);
    }

    // Idempotent: the same reaction again changes nothing and says nothing.
    let (status, again) =
        s.t.call(Method::POST, &thumbs, Some(&member.token), None)
            .await;
    assert_eq!((status, again), (200, reaction.clone()));
    let (status, reaction) =
        s.t.call(Method::POST, &thumbs, Some(&owner.token), None)
            .await;
    assert_eq!(status, 200, "{reaction}");
    assert_eq!(reaction["count"], 2);
    let mut reactors = vec![owner.id.clone(), member.id.clone()];
    reactors.sort();
    assert_eq!(reaction["reactor_user_ids"], json!(reactors));
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        assert_eq!(next_message_event(socket).await, second);
    }
    s.elsewhere_sentinels().await;

    // Each viewer sees their own flag; someone who did not react sees false.
    let bystander = s.bystander.clone();
    for (viewer, mine) in [(&member, true), (&bystander, false)] {
        let listed = s.history(viewer).await;
        let listed = listed
            .iter()
            .find(|m| m["message_id"] == id)
            .expect("listed");
        assert_eq!(
            listed["reactions"],
            json!([{"emoji": "👍", "count": 2, "reacted_by_me": mine, "reactor_user_ids": reactors}])
        );
    }

    let (status, removed) =
        s.t.call(Method::DELETE, &thumbs, Some(&member.token), None)
            .await;
    assert_eq!(
        (status, removed),
        (
            200,
            json!({"emoji": "👍", "count": 1, "reacted_by_me": false, "reactor_user_ids": [owner.id]})
        )
    );
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        let frame = next_message_event(socket).await;
        assert_eq!(frame["d"]["operation"], "remove", "{frame}");
        assert_eq!(frame["d"]["count"], 1);
        assert_eq!(frame["d"]["actor_user_id"], member.id.as_str());
    }
    // Removing what is not there: 200, nothing published.
    let (status, removed) =
        s.t.call(Method::DELETE, &thumbs, Some(&member.token), None)
            .await;
    assert_eq!((status, removed["count"].as_i64()), (200, Some(1)));
    s.channel_sentinel().await;
    s.elsewhere_sentinels().await;

    // The last reactor leaves: count 0, no ids, and the list drops it.
    let (status, removed) =
        s.t.call(Method::DELETE, &thumbs, Some(&owner.token), None)
            .await;
    assert_eq!(
        (status, removed),
        (
            200,
            json!({"emoji": "👍", "count": 0, "reacted_by_me": false})
        )
    );
    let listed = s.history(&owner).await;
    let listed = listed
        .iter()
        .find(|m| m["message_id"] == id)
        .expect("listed");
    assert_eq!(listed["reactions"], json!([]));
    s.t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reactions_reach_channel_subscribers_only() {
    reactions_reach_channel_subscribers_only(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_reactions_reach_channel_subscribers_only() {
    reactions_reach_channel_subscribers_only(Backends::External).await;
}

/// Strangers cannot react; bad emoji, bad ids, unknown messages and the
/// 65th emoji are refused without writing or publishing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reactions_write_nothing() {
    let Some(mut s) = Scene::start(Backends::Embedded).await else {
        return;
    };
    let (owner, outsider) = (s.owner.clone(), s.outsider.clone());
    let message = s.post_message(&owner, "react carefully").await;
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        next_message_event(socket).await;
    }
    let id = message["message_id"].as_str().expect("id");
    let reactions = format!("{}/{id}/reactions", s.messages());

    for method in [Method::POST, Method::DELETE] {
        let path = format!("{reactions}/{}", percent_encode("👍"));
        let (status, body) =
            s.t.call(method.clone(), &path, Some(&outsider.token), None)
                .await;
        assert_eq!((status, body), (403, json!({"error": "forbidden"})));
        for (path, expected) in [
            (
                format!("{reactions}/{}", percent_encode(&"é".repeat(33))),
                400,
            ),
            (format!("{reactions}/{}", percent_encode("a b")), 400),
            (format!("{reactions}/{}", percent_encode("a\tb")), 400),
            (
                format!("{}/nope/reactions/{}", s.messages(), percent_encode("👍")),
                400,
            ),
            (
                format!(
                    "{}/{}/reactions/{}",
                    s.messages(),
                    ulid::Ulid::generate(),
                    percent_encode("👍")
                ),
                404,
            ),
        ] {
            let (status, _) =
                s.t.call(method.clone(), &path, Some(&owner.token), None)
                    .await;
            assert_eq!(status, expected, "{method} {path}");
        }
    }
    let listed = s.history(&owner).await;
    assert_eq!(listed[0]["reactions"], json!([]));
    s.channel_sentinel().await;

    // 32 characters is fine; 64 distinct emoji per message, no more.
    let long = "é".repeat(32);
    let (status, reaction) =
        s.t.call(
            Method::POST,
            &format!("{reactions}/{}", percent_encode(&long)),
            Some(&owner.token),
            None,
        )
        .await;
    assert_eq!((status, &reaction["emoji"]), (200, &json!(long)));
    for n in 1..64 {
        let (status, _) =
            s.t.call(
                Method::POST,
                &format!("{reactions}/e{n}"),
                Some(&owner.token),
                None,
            )
            .await;
        assert_eq!(status, 200);
    }
    let (status, body) =
        s.t.call(
            Method::POST,
            &format!("{reactions}/e64"),
            Some(&owner.token),
            None,
        )
        .await;
    assert_eq!((status, body), (400, json!({"error": "invalid_request"})));
    let listed = s.history(&owner).await;
    assert_eq!(listed[1]["reactions"].as_array().map(Vec::len), Some(64));
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        // 64 additions, and nothing for the refusal.
        for _ in 0..64 {
            assert_eq!(next_message_event(socket).await["t"], "message_reaction");
        }
    }
    s.channel_sentinel().await;
    s.t.stack.stop().await.expect("clean shutdown");
}

// --- attachments -------------------------------------------------------------

/// Upload, download, send with a message (content may then be empty),
/// see it in history and in the subscribers' `message_create`; deleting
/// the message deletes the attachment's row and file.
async fn attachments_travel_with_their_message(backends: Backends) {
    let Some(mut s) = Scene::start(backends).await else {
        return;
    };
    let (owner, member) = (s.owner.clone(), s.member.clone());
    let root = s.t.stack.attachment_root.clone();
    let bytes = png(300_000);
    let (status, attachment) = upload(
        &s.t,
        &s.attachments(),
        &member.token,
        "?filename=holiday%20photo.png",
        Some("image/png"),
        bytes.clone(),
    )
    .await;
    assert_eq!(status, 200, "{attachment}");
    let attachment_id = attachment["attachment_id"].as_str().expect("id").to_owned();
    assert_eq!(
        attachment,
        json!({
            "attachment_id": attachment_id, "guild_id": s.guild, "channel_id": s.channel,
            "owner_id": member.id, "filename": "holiday photo.png", "mime_type": "image/png",
            "size_bytes": 300_000, "sha256_hex": sha256_hex(&bytes),
        })
    );
    assert_eq!(stored_files(&root), [format!("objects/{attachment_id}")]);

    // Without a Content-Type the sniffed type is taken, and the name
    // defaults.
    let jpeg = [&[0xFF, 0xD8, 0xFF, 0xE0][..], &[7; 100]].concat();
    let (status, draft) = upload(&s.t, &s.attachments(), &owner.token, "", None, jpeg).await;
    assert_eq!(status, 200, "{draft}");
    assert_eq!(
        (draft["filename"].as_str(), draft["mime_type"].as_str()),
        (Some("upload.bin"), Some("image/jpeg"))
    );

    // The uploader downloads their draft; nobody else sees it yet.
    let file = format!("{}/{attachment_id}", s.attachments());
    let response =
        s.t.http
            .get(s.t.api(&file))
            .bearer_auth(&member.token)
            .send()
            .await
            .expect("sent");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "private, no-store");
    assert_eq!(
        response.bytes().await.expect("bytes").as_ref(),
        bytes.as_slice()
    );
    let (status, _) = s.t.call(Method::GET, &file, Some(&owner.token), None).await;
    assert_eq!(status, 404);

    let (status, message) =
        s.t.post(
            &s.messages(),
            Some(&member.token),
            json!({"content": "", "attachment_ids": [attachment_id]}),
        )
        .await;
    assert_eq!(status, 200, "{message}");
    assert_eq!(message["content"], "");
    assert_eq!(message["attachments"], json!([attachment]));
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        assert_eq!(
            next_message_event(socket).await,
            json!({"v": 1, "t": "message_create", "d": message})
        );
    }
    assert_eq!(s.history(&owner).await[0], message);
    // Sent, it is the channel's: any viewer may download it.
    let response =
        s.t.http
            .get(s.t.api(&file))
            .bearer_auth(&owner.token)
            .send()
            .await
            .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.bytes().await.expect("bytes").as_ref(),
        bytes.as_slice()
    );

    let path = format!(
        "{}/{}",
        s.messages(),
        message["message_id"].as_str().expect("id")
    );
    let (status, _) =
        s.t.call(Method::DELETE, &path, Some(&member.token), None)
            .await;
    assert_eq!(status, 204);
    let (status, _) =
        s.t.call(Method::GET, &file, Some(&member.token), None)
            .await;
    assert_eq!(status, 404);
    assert_eq!(
        stored_files(&root),
        [format!(
            "objects/{}",
            draft["attachment_id"].as_str().expect("id")
        )]
    );
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        assert_eq!(next_message_event(socket).await["t"], "message_delete");
    }
    s.elsewhere_sentinels().await;
    s.t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_attachments_travel_with_their_message() {
    attachments_travel_with_their_message(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_attachments_travel_with_their_message() {
    attachments_travel_with_their_message(Backends::External).await;
}

/// Bad uploads are refused with the status of PROTOCOL.md §2.12 and leave no file
/// and no row behind; so are uploads by strangers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_leave_nothing_behind() {
    let Some(s) = Scene::start(Backends::Embedded).await else {
        return;
    };
    let (member, outsider) = (s.member.clone(), s.outsider.clone());
    let root = s.t.stack.attachment_root.clone();
    let bad_request = json!({"error": "invalid_request"});
    for (query, content_type, bytes, expected) in [
        ("?filename=a.png&kind=x", Some("image/png"), png(100), 400),
        (
            &*format!("?filename={}", "x".repeat(129)),
            Some("image/png"),
            png(100),
            400,
        ),
        ("?filename=", Some("image/png"), png(100), 400),
        (
            "?filename=..%2Fetc%2Fpasswd",
            Some("image/png"),
            png(100),
            400,
        ),
        ("?filename=a%5Cb", Some("image/png"), png(100), 400),
        ("?filename=a%00b", Some("image/png"), png(100), 400),
        ("", Some("image/png"), Vec::new(), 400),
        ("", Some("text/plain"), b"just some words".to_vec(), 400),
        ("", None, b"just some words".to_vec(), 400),
        ("", Some("image/jpeg"), png(100), 400),
        ("", Some("application/octet-stream"), png(100), 400),
    ] {
        let (status, body) = upload(
            &s.t,
            &s.attachments(),
            &member.token,
            query,
            content_type,
            bytes,
        )
        .await;
        assert_eq!(
            (status, &body),
            (expected, &bad_request),
            "{query} {content_type:?}"
        );
    }
    // Exactly 128 bytes of name is fine (and then removed again).
    let name = "n".repeat(124) + ".png";
    let (status, fine) = upload(
        &s.t,
        &s.attachments(),
        &member.token,
        &format!("?filename={name}"),
        None,
        png(10),
    )
    .await;
    assert_eq!(
        (status, fine["filename"].as_str()),
        (200, Some(name.as_str()))
    );
    let fine_path = format!(
        "{}/{}",
        s.attachments(),
        fine["attachment_id"].as_str().expect("id")
    );
    let (status, body) =
        s.t.call(Method::DELETE, &fine_path, Some(&member.token), None)
            .await;
    assert_eq!((status, body), (204, Value::Null));

    let (status, body) = upload(&s.t, &s.attachments(), &outsider.token, "", None, png(100)).await;
    assert_eq!((status, body), (403, json!({"error": "forbidden"})));

    // Over 25 MiB: refused unread when the length is announced (not one
    // byte of the body is sent)...
    let (status, body) = raw_upload(&s, &member, Body::Announced(25 * MIB + 1)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body, r#"{"error":"payload_too_large"}"#);
    // ...and cut off while streaming when it is not.
    let (status, body) = raw_upload(&s, &member, Body::Chunked(25 * MIB + 1)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body, r#"{"error":"payload_too_large"}"#);
    // Exactly 25 MiB, chunked, is fine.
    let (status, body) = raw_upload(&s, &member, Body::Chunked(25 * MIB)).await;
    assert_eq!(status, 200, "{body}");
    let big: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(big["size_bytes"], 25 * MIB);

    assert_eq!(
        stored_files(&root),
        [format!(
            "objects/{}",
            big["attachment_id"].as_str().expect("id")
        )]
    );
    s.t.stack.stop().await.expect("clean shutdown");
}

/// How [`raw_upload`] sends its body.
enum Body {
    /// Only a `Content-Length` of this many bytes, and no body at all.
    Announced(usize),
    /// A PNG of this many bytes with `Transfer-Encoding: chunked`, so the
    /// server cannot know its size up front.
    Chunked(usize),
}

/// An upload over a raw connection, which (unlike an HTTP client) does not
/// give up when the server answers before the body is sent; returns the
/// status and the body text.
async fn raw_upload(s: &Scene, user: &User, body: Body) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(s.t.stack.public_addr)
        .await
        .expect("connects");
    let framing = match body {
        Body::Announced(len) => format!("content-length: {len}"),
        Body::Chunked(_) => "transfer-encoding: chunked".to_owned(),
    };
    let head = format!(
        "POST /api{} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
         {framing}\r\nconnection: close\r\n\r\n",
        s.attachments(),
        user.token
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    if let Body::Chunked(len) = body {
        for chunk in png(len).chunks(MIB) {
            let framed = [format!("{:X}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
            // The server may answer and close before the last chunk.
            if stream.write_all(&framed).await.is_err() {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

/// The payload of a (possibly) chunked response body.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

/// A message may only use its author's own unsent uploads to its channel,
/// at most five, each once; anything else is refused and nothing is
/// written or published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_refuse_attachments_that_are_not_theirs_to_send() {
    let Some(mut s) = Scene::start(Backends::Embedded).await else {
        return;
    };
    let (owner, member) = (s.owner.clone(), s.member.clone());
    let mut mine = Vec::new();
    for _ in 0..6 {
        let (status, a) = upload(&s.t, &s.attachments(), &member.token, "", None, png(64)).await;
        assert_eq!(status, 200, "{a}");
        mine.push(a["attachment_id"].as_str().expect("id").to_owned());
    }
    let (_, theirs) = upload(&s.t, &s.attachments(), &owner.token, "", None, png(64)).await;
    let other_channel = format!(
        "/guilds/{}/channels/{}/attachments",
        s.guild, s.other_channel
    );
    let (_, elsewhere) = upload(&s.t, &other_channel, &member.token, "", None, png(64)).await;
    let (status, used) =
        s.t.post(
            &s.messages(),
            Some(&member.token),
            json!({"content": "sent", "attachment_ids": [mine[5]]}),
        )
        .await;
    assert_eq!(status, 200, "{used}");
    for socket in [&mut s.owner_socket, &mut s.member_socket] {
        next_message_event(socket).await;
    }

    let bad_request = json!({"error": "invalid_request"});
    for (body, expected) in [
        (json!({"content": "six", "attachment_ids": mine[..6]}), 400),
        (
            json!({"content": "x", "attachment_ids": [mine[0], mine[0]]}),
            400,
        ),
        (
            json!({"content": "x", "attachment_ids": ["not-a-ulid"]}),
            400,
        ),
        (
            json!({"content": "x", "attachment_ids": [mine[0], theirs["attachment_id"]]}),
            400,
        ),
        (
            json!({"content": "x", "attachment_ids": [elsewhere["attachment_id"]]}),
            400,
        ),
        (json!({"content": "x", "attachment_ids": [mine[5]]}), 400),
        (
            json!({"content": "x", "attachment_ids": [ulid::Ulid::generate().to_string()]}),
            400,
        ),
        (json!({"content": ""}), 400),
        (json!({"content": "", "attachment_ids": []}), 400),
        (
            json!({"content": "x".repeat(2001), "attachment_ids": [mine[0]]}),
            400,
        ),
        (json!({"content": "x", "attachment_ids": mine[0]}), 422),
        (json!({"content": "x", "attachment_ids": [1]}), 422),
        (json!({"attachment_ids": [mine[0]]}), 422),
    ] {
        let (status, error) =
            s.t.post(&s.messages(), Some(&member.token), body.clone())
                .await;
        assert_eq!((status, &error), (expected, &bad_request), "{body}");
    }
    let listed = s.history(&member).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0], used);
    s.channel_sentinel().await;

    // Five is the most, and the first five are all still unsent.
    let (status, five) =
        s.t.post(
            &s.messages(),
            Some(&member.token),
            json!({"content": "five", "attachment_ids": mine[..5]}),
        )
        .await;
    assert_eq!(status, 200, "{five}");
    let sent: Vec<_> = five["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .map(|a| a["attachment_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(sent, mine[..5]);
    s.t.stack.stop().await.expect("clean shutdown");
}

/// Downloads and attachment deletes: strangers are refused, a fellow
/// member may not delete someone's sent attachment but a moderator may,
/// and bad or unknown ids are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachment_downloads_and_deletes_are_guarded() {
    let Some(s) = Scene::start(Backends::Embedded).await else {
        return;
    };
    let (owner, member, bystander, outsider) = (
        s.owner.clone(),
        s.member.clone(),
        s.bystander.clone(),
        s.outsider.clone(),
    );
    let root = s.t.stack.attachment_root.clone();
    let (_, a) = upload(&s.t, &s.attachments(), &member.token, "", None, png(64)).await;
    let (_, draft) = upload(&s.t, &s.attachments(), &member.token, "", None, png(64)).await;
    let (status, _) =
        s.t.post(
            &s.messages(),
            Some(&member.token),
            json!({"content": "file", "attachment_ids": [a["attachment_id"]]}),
        )
        .await;
    assert_eq!(status, 200);
    let file = format!(
        "{}/{}",
        s.attachments(),
        a["attachment_id"].as_str().expect("id")
    );
    let draft_file = format!(
        "{}/{}",
        s.attachments(),
        draft["attachment_id"].as_str().expect("id")
    );

    for method in [Method::GET, Method::DELETE] {
        let (status, body) =
            s.t.call(method.clone(), &file, Some(&outsider.token), None)
                .await;
        assert_eq!(
            (status, body),
            (403, json!({"error": "forbidden"})),
            "{method}"
        );
        for (path, expected) in [
            (format!("{}/not-a-ulid", s.attachments()), 400),
            (
                format!("{}/{}", s.attachments(), ulid::Ulid::generate()),
                404,
            ),
            // Someone else's unsent upload does not exist for others.
            (draft_file.clone(), 404),
            (
                format!(
                    "/guilds/{}/channels/{}/attachments/{}",
                    s.guild,
                    s.other_channel,
                    a["attachment_id"].as_str().expect("id")
                ),
                404,
            ),
        ] {
            let (status, _) =
                s.t.call(method.clone(), &path, Some(&bystander.token), None)
                    .await;
            assert_eq!(status, expected, "{method} {path}");
        }
    }
    let (status, body) =
        s.t.call(Method::DELETE, &file, Some(&bystander.token), None)
            .await;
    assert_eq!((status, body), (403, json!({"error": "forbidden"})));
    assert_eq!(stored_files(&root).len(), 2);

    // The owner (a moderator) removes it: gone from disk and from history.
    let (status, body) =
        s.t.call(Method::DELETE, &file, Some(&owner.token), None)
            .await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, _) =
        s.t.call(Method::GET, &file, Some(&member.token), None)
            .await;
    assert_eq!(status, 404);
    assert_eq!(s.history(&member).await[0]["attachments"], json!([]));
    assert_eq!(
        stored_files(&root),
        [format!(
            "objects/{}",
            draft["attachment_id"].as_str().expect("id")
        )]
    );
    // The uploader removes their own draft.
    let (status, _) =
        s.t.call(Method::DELETE, &draft_file, Some(&member.token), None)
            .await;
    assert_eq!(status, 204);
    assert!(stored_files(&root).is_empty());
    s.t.stack.stop().await.expect("clean shutdown");
}

/// 250 MiB per user: the upload past it is 409 and leaves nothing; freeing
/// space by deleting makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachment_quota_is_per_user_and_freed_by_deletes() {
    let Some(s) = Scene::start(Backends::Embedded).await else {
        return;
    };
    let (owner, member) = (s.owner.clone(), s.member.clone());
    let root = s.t.stack.attachment_root.clone();
    let mut ids = Vec::new();
    for _ in 0..10 {
        let (status, a) = upload(
            &s.t,
            &s.attachments(),
            &member.token,
            "",
            None,
            png(25 * MIB),
        )
        .await;
        assert_eq!(status, 200, "{a}");
        ids.push(a["attachment_id"].as_str().expect("id").to_owned());
    }
    // Exactly at the quota now: not one more file fits.
    let (status, body) = upload(&s.t, &s.attachments(), &member.token, "", None, png(9)).await;
    assert_eq!((status, body), (409, json!({"error": "quota_exceeded"})));
    assert_eq!(stored_files(&root).len(), 10);

    // Someone else's quota is untouched.
    let (status, _) = upload(&s.t, &s.attachments(), &owner.token, "", None, png(9)).await;
    assert_eq!(status, 200);
    let first = format!("{}/{}", s.attachments(), ids[0]);
    let (status, _) =
        s.t.call(Method::DELETE, &first, Some(&member.token), None)
            .await;
    assert_eq!(status, 204);
    let (status, _) = upload(
        &s.t,
        &s.attachments(),
        &member.token,
        "",
        None,
        png(25 * MIB),
    )
    .await;
    assert_eq!(status, 200);
    s.t.stack.stop().await.expect("clean shutdown");
}
