//! Message search end to end: REST → api → gRPC → search service, with the
//! index fed by the api's message change log. Freshness (create, edit,
//! delete), authorization at query time (hidden channels, revoked roles,
//! kicked and banned members), every query cap, the maintenance routes, a
//! search service that starts after the api, and one that restarts and
//! catches up from its recorded position.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Backends, DEADLINE, TestStack, User, percent_encode};

/// `GET /guilds/{guild}/search?{query}` as `user`.
async fn search_raw(t: &TestStack, user: &User, guild: &str, query: &str) -> (u16, Value) {
    t.get(
        &format!("/guilds/{guild}/search?{query}"),
        Some(&user.token),
    )
    .await
}

/// The ids a search for `text` returns, sorted; the call must succeed.
async fn found(t: &TestStack, user: &User, guild: &str, text: &str) -> Vec<String> {
    let (status, body) = search_raw(t, user, guild, &format!("q={}", percent_encode(text))).await;
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<String> = body["message_ids"]
        .as_array()
        .expect("message_ids")
        .iter()
        .map(|id| id.as_str().expect("id").to_owned())
        .collect();
    let messages: Vec<&str> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["message_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, messages, "message_ids and messages agree");
    ids.sort();
    ids
}

/// Polls until a search for `text` returns exactly `expected`.
async fn eventually_found(t: &TestStack, user: &User, guild: &str, text: &str, expected: &[&str]) {
    let mut expected: Vec<String> = expected.iter().map(|&id| id.to_owned()).collect();
    expected.sort();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = found(t, user, guild, text).await;
        if got == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "search {text:?}: expected {expected:?}, still {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A public guild with one text channel, its owner and one joined member.
struct Guild {
    owner: User,
    member: User,
    id: String,
    general: String,
}

impl Guild {
    async fn new(t: &TestStack) -> Self {
        let owner = t.user("owner").await;
        let member = t.user("member").await;
        let (id, general) = t.guild_with_channel(&owner, "public").await;
        t.join(&member, &id).await;
        Self {
            owner,
            member,
            id,
            general,
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("/guilds/{}{rest}", self.id)
    }

    async fn channel(&self, t: &TestStack, name: &str) -> String {
        let (status, channel) = t
            .post(
                &self.path("/channels"),
                Some(&self.owner.token),
                json!({"name": name}),
            )
            .await;
        assert_eq!(status, 200, "{channel}");
        channel["channel_id"].as_str().expect("id").to_owned()
    }

    /// Posts and returns the new message's id.
    async fn say(&self, t: &TestStack, user: &User, channel: &str, content: &str) -> String {
        let (status, message) = t
            .post(
                &self.path(&format!("/channels/{channel}/messages")),
                Some(&user.token),
                json!({"content": content}),
            )
            .await;
        assert_eq!(status, 200, "{message}");
        message["message_id"].as_str().expect("id").to_owned()
    }

    async fn role_id(&self, t: &TestStack, name: &str) -> String {
        let (status, roles) = t.get(&self.path("/roles"), Some(&self.owner.token)).await;
        assert_eq!(status, 200, "{roles}");
        roles["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["role_id"].as_str())
            .unwrap_or_else(|| panic!("no role {name} in {roles}"))
            .to_owned()
    }

    async fn override_role(
        &self,
        t: &TestStack,
        channel: &str,
        role: &str,
        allow: Value,
        deny: Value,
    ) {
        let path = self.path(&format!(
            "/channels/{channel}/permission-overrides/role/{role}"
        ));
        let (status, body) = t
            .post(
                &path,
                Some(&self.owner.token),
                json!({"allow": allow, "deny": deny}),
            )
            .await;
        assert_eq!((status, body), (200, json!({"accepted": true})));
    }
}

async fn search_follows_creates_edits_and_deletes(backends: Backends) {
    let Some(t) = TestStack::start(backends, 1).await else {
        return;
    };
    let g = Guild::new(&t).await;
    let first = g
        .say(&t, &g.owner, &g.general, "deploy the **rocket** today")
        .await;
    let second = g
        .say(&t, &g.member, &g.general, "the rocket is ready")
        .await;
    eventually_found(&t, &g.member, &g.id, "rocket", &[&first, &second]).await;

    // The response carries the full messages, as the history does.
    let (status, body) = search_raw(&t, &g.member, &g.id, "q=deploy").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["messages"][0]["content"],
        "deploy the **rocket** today"
    );
    assert_eq!(body["messages"][0]["author_id"], g.owner.id.as_str());
    assert_eq!(body["messages"][0]["channel_id"], g.general.as_str());

    // An edit replaces the indexed text.
    let edit = g.path(&format!("/channels/{}/messages/{first}", g.general));
    let (status, body) = t
        .call(
            Method::PATCH,
            &edit,
            Some(&g.owner.token),
            Some(json!({"content": "launch the shuttle today"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually_found(&t, &g.member, &g.id, "shuttle", &[&first]).await;
    assert_eq!(
        found(&t, &g.member, &g.id, "rocket").await,
        std::slice::from_ref(&second)
    );

    // A delete removes it.
    let delete = g.path(&format!("/channels/{}/messages/{second}", g.general));
    let (status, _) = t
        .call(Method::DELETE, &delete, Some(&g.member.token), None)
        .await;
    assert_eq!(status, 204);
    eventually_found(&t, &g.member, &g.id, "rocket", &[]).await;
    assert_eq!(
        found(&t, &g.member, &g.id, "today").await,
        std::slice::from_ref(&first)
    );

    // limit caps the page, channel_id narrows it.
    let other = g.channel(&t, "other").await;
    let mut today = vec![first.clone()];
    for n in 0..3 {
        today.push(g.say(&t, &g.owner, &other, &format!("today {n}")).await);
    }
    let expected: Vec<&str> = today.iter().map(String::as_str).collect();
    eventually_found(&t, &g.member, &g.id, "today", &expected).await;
    let (status, body) = search_raw(&t, &g.member, &g.id, "q=today&limit=2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message_ids"].as_array().map(Vec::len), Some(2));
    let query = format!("q=today&channel_id={}", g.general);
    let (status, body) = search_raw(&t, &g.member, &g.id, &query).await;
    assert_eq!((status, body["message_ids"].clone()), (200, json!([first])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_search_follows_creates_edits_and_deletes() {
    search_follows_creates_edits_and_deletes(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_search_follows_creates_edits_and_deletes() {
    search_follows_creates_edits_and_deletes(Backends::External).await;
}

async fn results_are_authorized_per_channel_at_query_time(backends: Backends) {
    let Some(t) = TestStack::start(backends, 1).await else {
        return;
    };
    let g = Guild::new(&t).await;
    let secret = g.channel(&t, "secret").await;
    let lounge = g.channel(&t, "lounge").await;
    let open = g.say(&t, &g.owner, &g.general, "needle in general").await;
    let hidden = g.say(&t, &g.owner, &secret, "needle in secret").await;
    let vip = g.say(&t, &g.owner, &lounge, "needle in lounge").await;

    // The owner sees everything: the index holds all three.
    eventually_found(&t, &g.owner, &g.id, "needle", &[&open, &hidden, &vip]).await;

    // secret: hidden from members by a legacy override on the member role.
    let (status, body) = t
        .post(
            &g.path(&format!("/channels/{secret}/overrides/member")),
            Some(&g.owner.token),
            json!({"allow": [], "deny": ["create_message"]}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"accepted": true})));
    // lounge: hidden from @everyone, open to the vip role.
    let everyone = g.role_id(&t, "@everyone").await;
    g.override_role(&t, &lounge, &everyone, json!([]), json!(["create_message"]))
        .await;
    let (status, role) = t
        .post(
            &g.path("/roles"),
            Some(&g.owner.token),
            json!({"name": "vip", "permissions": ["create_message"]}),
        )
        .await;
    assert_eq!(status, 200, "{role}");
    let vip_role = role["role_id"].as_str().expect("role id").to_owned();
    g.override_role(&t, &lounge, &vip_role, json!(["create_message"]), json!([]))
        .await;

    assert_eq!(
        found(&t, &g.member, &g.id, "needle").await,
        std::slice::from_ref(&open)
    );
    // Naming the hidden channel gives nothing either.
    let query = format!("q=needle&channel_id={secret}");
    let (status, body) = search_raw(&t, &g.member, &g.id, &query).await;
    assert_eq!((status, body["message_ids"].clone()), (200, json!([])));

    // Granting the role opens the lounge; revoking it closes it again.
    let assignment = g.path(&format!("/roles/{vip_role}/members/{}", g.member.id));
    let (status, body) = t.post(&assignment, Some(&g.owner.token), json!(null)).await;
    assert_eq!(status, 200, "{body}");
    let mut with_vip = vec![open.clone(), vip.clone()];
    with_vip.sort();
    assert_eq!(found(&t, &g.member, &g.id, "needle").await, with_vip);
    let (status, body) = t
        .call(Method::DELETE, &assignment, Some(&g.owner.token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        found(&t, &g.member, &g.id, "needle").await,
        std::slice::from_ref(&open)
    );

    // A hidden channel's hits never crowd a page: with limit 1 the member
    // still gets the one message they may see, though the hidden ones rank
    // first (newer, equally relevant).
    let (status, body) = search_raw(&t, &g.member, &g.id, "q=needle&limit=1").await;
    assert_eq!((status, body["message_ids"].clone()), (200, json!([open])));

    // Kicked: no search at all.
    let kick = g.path(&format!("/members/{}/kick", g.member.id));
    let (status, body) = t.post(&kick, Some(&g.owner.token), json!(null)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = search_raw(&t, &g.member, &g.id, "q=needle").await;
    assert_eq!((status, body), (403, json!({"error": "forbidden"})));

    // Banned (after rejoining): the same.
    let (status, _) = t
        .post(&g.path("/join"), Some(&g.member.token), json!(null))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        found(&t, &g.member, &g.id, "needle").await,
        std::slice::from_ref(&open)
    );
    let ban = g.path(&format!("/members/{}/ban", g.member.id));
    let (status, body) = t.post(&ban, Some(&g.owner.token), json!(null)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = search_raw(&t, &g.member, &g.id, "q=needle").await;
    assert_eq!((status, body), (403, json!({"error": "forbidden"})));

    // Never a member: refused too.
    let stranger = t.user("stranger").await;
    let (status, _) = search_raw(&t, &stranger, &g.id, "q=needle").await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_results_are_authorized_per_channel_at_query_time() {
    results_are_authorized_per_channel_at_query_time(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_results_are_authorized_per_channel_at_query_time() {
    results_are_authorized_per_channel_at_query_time(Backends::External).await;
}

/// Every cap, a malformed query and bad parameters are 400
/// `invalid_request`; a missing token is 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cap_and_malformed_query_is_refused() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let g = Guild::new(&t).await;
    let hit = g.say(&t, &g.owner, &g.general, "kitten deploys").await;
    eventually_found(&t, &g.member, &g.id, "kitten", &[&hit]).await;

    let words = |n: usize| vec!["kitten"; n].join(" ");
    // At each cap: accepted.
    for ok in [
        format!("q={}", percent_encode(&"k".repeat(256))),
        format!("q={}", percent_encode(&format!("  {}  ", "k".repeat(256)))),
        format!("q={}", percent_encode(&words(20))),
        format!("q={}", percent_encode("kit* dep* k?tten k*")),
        format!("q={}", percent_encode("kiten~ deploy~2")),
        "q=kitten&limit=1".to_owned(),
        "q=kitten&limit=50".to_owned(),
    ] {
        let (status, body) = search_raw(&t, &g.member, &g.id, &ok).await;
        assert_eq!(status, 200, "{ok}: {body}");
    }
    let (_, body) = search_raw(
        &t,
        &g.member,
        &g.id,
        &format!("q={}", percent_encode("kiten~")),
    )
    .await;
    assert_eq!(body["message_ids"], json!([hit]), "fuzzy matches");
    let (_, body) = search_raw(
        &t,
        &g.member,
        &g.id,
        &format!("q={}", percent_encode("dep*")),
    )
    .await;
    assert_eq!(body["message_ids"], json!([hit]), "wildcards match");

    // Past each cap, or malformed: refused.
    for bad in [
        format!("q={}", percent_encode(&"k".repeat(257))),
        format!("q={}", percent_encode(&words(21))),
        format!("q={}", percent_encode("kit* dep* k?tten k* d*")),
        format!("q={}", percent_encode("a~ b~ c~")),
        format!("q={}", percent_encode("author:bob")),
        format!("q={}", percent_encode("\"unclosed phrase")),
        format!("q={}", percent_encode("kitten~7")),
        format!("q={}", percent_encode("*")),
        format!("q={}", percent_encode("-kitten")),
        "q=".to_owned(),
        format!("q={}", percent_encode("   ")),
        "limit=5".to_owned(),
        "q=kitten&limit=0".to_owned(),
        "q=kitten&limit=51".to_owned(),
        "q=kitten&limit=many".to_owned(),
        "q=kitten&channel_id=not-a-ulid".to_owned(),
        "q=kitten&sort=new".to_owned(),
    ] {
        let (status, body) = search_raw(&t, &g.member, &g.id, &bad).await;
        assert_eq!(
            (status, body),
            (400, json!({"error": "invalid_request"})),
            "{bad}"
        );
    }
    let (status, _) = t
        .get(&format!("/guilds/{}/search?q=kitten", g.id), None)
        .await;
    assert_eq!(status, 401);
    let (status, _) = t
        .get("/guilds/not-a-guild/search?q=kitten", Some(&g.member.token))
        .await;
    assert_eq!(status, 400);
}

/// Rebuild (204) and reconcile need `manage_workspace_roles`; after either,
/// search still answers from the database's truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_and_reconcile_need_manage_workspace_roles() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let g = Guild::new(&t).await;
    let id = g.say(&t, &g.member, &g.general, "indexed words").await;
    eventually_found(&t, &g.member, &g.id, "indexed", &[&id]).await;

    let moderator = t.user("moderator").await;
    let (status, _) = t
        .post(&g.path("/join"), Some(&moderator.token), json!(null))
        .await;
    assert_eq!(status, 200);
    let (status, body) = t
        .call(
            Method::PATCH,
            &g.path(&format!("/members/{}", moderator.id)),
            Some(&g.owner.token),
            Some(json!({"role": "moderator"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for user in [&g.member, &moderator] {
        for route in ["/search/rebuild", "/search/reconcile"] {
            let (status, body) = t.post(&g.path(route), Some(&user.token), json!(null)).await;
            assert_eq!(
                (status, body),
                (403, json!({"error": "forbidden"})),
                "{route} as {}",
                user.username
            );
        }
    }

    let (status, body) = t
        .post(
            &g.path("/search/reconcile"),
            Some(&g.owner.token),
            json!(null),
        )
        .await;
    assert_eq!((status, body), (200, json!({"upserted": 0, "deleted": 0})));
    let (status, body) = t
        .post(
            &g.path("/search/rebuild"),
            Some(&g.owner.token),
            json!(null),
        )
        .await;
    assert_eq!((status, body), (204, Value::Null));
    assert_eq!(
        found(&t, &g.member, &g.id, "indexed").await,
        std::slice::from_ref(&id)
    );
    let (status, body) = t
        .post(
            &g.path("/search/reconcile"),
            Some(&g.owner.token),
            json!(null),
        )
        .await;
    assert_eq!((status, body), (200, json!({"upserted": 0, "deleted": 0})));
}

/// The port a search service will appear on, for `search_on_reserved_port`.
static RESERVED_SEARCH_PORT: OnceLock<u16> = OnceLock::new();

fn search_on_reserved_port(config: &mut filament_api::Config) {
    let port = RESERVED_SEARCH_PORT.get().copied().unwrap_or(1);
    config.search_url = Some(format!("http://127.0.0.1:{port}"));
}

/// The api starts without its search service: search answers 500 while
/// everything else works, and search works once the service is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_answers_500_until_the_search_service_is_up() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        probe.local_addr().expect("addr").port()
    };
    RESERVED_SEARCH_PORT.set(port).expect("set once");
    let t = TestStack::start_with(Backends::Embedded, 1, |config| {
        config.tune_api = search_on_reserved_port;
    })
    .await
    .expect("embedded");
    let g = Guild::new(&t).await;
    let id = g.say(&t, &g.owner, &g.general, "late words").await;
    let (status, body) = search_raw(&t, &g.member, &g.id, "q=late").await;
    assert_eq!((status, body), (500, json!({"error": "internal_error"})));

    let mut config = filament_search::Config::new(
        ([127, 0, 0, 1], port).into(),
        format!("http://{}", t.stack.api_grpc_addr),
    );
    // The api's feed refuses a caller without the stack's service token.
    config.internal_token = t.stack.internal_token.clone();
    let search = filament_search::bind(config).await.expect("search binds");
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(search.run(stop.clone()));
    eventually_found(&t, &g.member, &g.id, "late", &[&id]).await;
    stop.cancel();
    running.await.expect("joined").expect("clean stop");
}

/// A search service with an on-disk index, stopped and restarted: it
/// resumes from the position recorded in its index, applying exactly the
/// changes it missed, with no document lost or doubled.
async fn a_restarted_search_service_catches_up(backends: Backends) {
    let Some(t) = TestStack::start(backends, 1).await else {
        return;
    };
    let g = Guild::new(&t).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let start = || async {
        let mut config = filament_search::Config::new(
            ([127, 0, 0, 1], 0).into(),
            format!("http://{}", t.stack.api_grpc_addr),
        );
        config.index = filament_search::IndexLocation::Dir(dir.path().to_owned());
        config.internal_token = t.stack.internal_token.clone();
        let search = filament_search::bind(config).await.expect("search binds");
        let engine = search.engine();
        let stop = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(search.run(stop.clone()));
        (engine, stop, running)
    };
    let guild_id: filament_ids::GuildId = g.id.parse().expect("guild id");
    let query = |engine: filament_search::Engine, text: &'static str| async move {
        use filament_search::SearchService as _;
        let mut ids: Vec<String> = engine
            .query(filament_search::QueryRequest {
                guild_id,
                text: text.to_owned(),
                limit: 50,
                channel_id: None,
                exclude_channel_ids: Vec::new(),
            })
            .await
            .expect("query")
            .iter()
            .map(|hit| hit.message_id.to_string())
            .collect();
        ids.sort();
        ids
    };
    let eventually =
        |engine: filament_search::Engine, text: &'static str, expected: Vec<String>| async move {
            let mut expected = expected;
            expected.sort();
            let deadline = tokio::time::Instant::now() + DEADLINE;
            loop {
                let got = query(engine.clone(), text).await;
                if got == expected {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "{text}: {got:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };

    let a = g.say(&t, &g.owner, &g.general, "alpha words").await;
    let b = g.say(&t, &g.owner, &g.general, "bravo words").await;
    let (engine, stop, running) = start().await;
    eventually(engine.clone(), "words", vec![a.clone(), b.clone()]).await;
    let position = engine.stats().committed_seq();
    stop.cancel();
    running.await.expect("joined").expect("clean stop");

    // Missed while it was down: a create, an edit and a delete.
    let c = g.say(&t, &g.owner, &g.general, "charlie words").await;
    let edit = g.path(&format!("/channels/{}/messages/{a}", g.general));
    let (status, _) = t
        .call(
            Method::PATCH,
            &edit,
            Some(&g.owner.token),
            Some(json!({"content": "alpha edited"})),
        )
        .await;
    assert_eq!(status, 200);
    let delete = g.path(&format!("/channels/{}/messages/{b}", g.general));
    let (status, _) = t
        .call(Method::DELETE, &delete, Some(&g.owner.token), None)
        .await;
    assert_eq!(status, 204);

    let (engine, stop, running) = start().await;
    eventually(engine.clone(), "words", vec![c.clone()]).await;
    eventually(engine.clone(), "edited", vec![a.clone()]).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while engine.stats().committed_seq() < position + 3 {
        assert!(tokio::time::Instant::now() < deadline, "never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(engine.stats().applied_changes(), 3, "only what it missed");
    assert_eq!(engine.num_docs(), 2, "no document lost or doubled");
    stop.cancel();
    running.await.expect("joined").expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_restarted_search_service_catches_up() {
    a_restarted_search_service_catches_up(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_restarted_search_service_catches_up() {
    a_restarted_search_service_catches_up(Backends::External).await;
}
