//! The api's link to the voice service: one lazily connected client, shared
//! by the voice routes and by the access changes that must take people out
//! of voice.
//!
//! A participant stays in voice only while their permissions still cover
//! what their token grants: seeing the channel, and for each grant its
//! permission (microphone `create_message`, camera `publish_video`, screen
//! share `publish_screen_share`, subscribing `subscribe_streams`). Kicks and
//! bans remove the member outright; role and override changes re-check the
//! guild's participants against this rule.

use std::time::Duration;

use filament_clients::VoiceClient;
use filament_proto::v1 as pb;
use filament_runtime::grpc_client::GrpcClientMetrics;
use ulid::Ulid;

use crate::domain::permissions::{Authorizer, Permission, Permissions};
use crate::error::{ApiError, ApiResult};

/// A voice call that takes longer than this has failed.
const VOICE_CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct VoiceLink {
    client: Option<VoiceClient>,
}

impl VoiceLink {
    /// Connects lazily: the api starts (and serves everything else) while
    /// the voice service is still down. No url: voice is not deployed.
    /// Every call carries the calling request's trace (the channel adds it).
    pub fn new(url: Option<&str>, grpc_clients: &GrpcClientMetrics) -> anyhow::Result<Self> {
        let client = url
            .map(|url| VoiceClient::new(url, VOICE_CALL_TIMEOUT, grpc_clients))
            .transpose()?;
        Ok(Self { client })
    }

    /// The client, for the voice routes (they map its status codes
    /// themselves); an error when voice is not configured.
    pub fn client(&self) -> ApiResult<&VoiceClient> {
        self.client
            .as_ref()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no voice service configured")))
    }

    /// Takes users who are no longer members (kick, ban) out of the guild's
    /// voice channels, so the others see them leave at once rather than
    /// when their token expires. Best effort: a failure is logged, and the
    /// token's TTL bounds what it leaves behind.
    pub async fn remove_members(&self, guild_id: &str, user_ids: &[String]) {
        let Some(client) = &self.client else {
            return;
        };
        for user_id in user_ids {
            if let Err(err) = client.remove_user(guild_id, user_id).await {
                tracing::warn!(%err, "cannot take a removed member out of voice");
            }
        }
    }

    /// Re-checks the guild's participants (only `user_ids`, unless empty)
    /// after a permission change, and removes those whose permissions no
    /// longer cover their grants. Best effort, like
    /// [`remove_members`](Self::remove_members).
    pub async fn recheck(&self, authorizer: &Authorizer, guild_id: &str, user_ids: &[String]) {
        let Some(client) = &self.client else {
            return;
        };
        let participants = match client.guild_participants(guild_id).await {
            Ok(participants) => participants,
            Err(err) => {
                tracing::warn!(%err, "cannot re-check voice participants");
                return;
            }
        };
        let mut doomed = Vec::new();
        for holder in participants {
            if !user_ids.is_empty() && !user_ids.contains(&holder.user_id) {
                continue;
            }
            if !still_covered(authorizer, guild_id, &holder).await {
                doomed.push(holder.user_id);
            }
        }
        self.remove_members(guild_id, &doomed).await;
    }
}

/// Whether the holder's current permissions cover their grants. Anything
/// unreadable counts as not covered: the safe answer is to leave voice.
async fn still_covered(
    authorizer: &Authorizer,
    guild_id: &str,
    holder: &pb::VoiceGrantHolder,
) -> bool {
    let ids = (
        guild_id.parse::<Ulid>(),
        holder.channel_id.parse::<Ulid>(),
        holder.user_id.parse::<Ulid>(),
    );
    let (Ok(guild), Ok(channel), Ok(user)) = ids else {
        return false;
    };
    match authorizer.channel(guild, channel, user).await {
        Ok((access, _)) => grants_covered(holder, access.permissions),
        Err(ApiError::Internal(err)) => {
            // The store is down: do not evict anyone on a guess.
            tracing::warn!(%err, "cannot re-check a voice participant");
            true
        }
        Err(_) => false,
    }
}

fn grants_covered(holder: &pb::VoiceGrantHolder, permissions: Permissions) -> bool {
    let subscribe = !holder.can_subscribe || permissions.contains(Permission::SubscribeStreams);
    let sources = holder
        .publish_sources
        .iter()
        .all(|raw| match pb::VoiceStream::try_from(*raw) {
            Ok(pb::VoiceStream::Microphone) => permissions.contains(Permission::CreateMessage),
            Ok(pb::VoiceStream::Camera) => permissions.contains(Permission::PublishVideo),
            Ok(pb::VoiceStream::ScreenShare) => {
                permissions.contains(Permission::PublishScreenShare)
            }
            _ => false,
        });
    subscribe && sources
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(can_subscribe: bool, sources: &[pb::VoiceStream]) -> pb::VoiceGrantHolder {
        pb::VoiceGrantHolder {
            user_id: Ulid::generate().to_string(),
            channel_id: Ulid::generate().to_string(),
            can_subscribe,
            publish_sources: sources.iter().map(|s| (*s).into()).collect(),
        }
    }

    #[test]
    fn each_grant_needs_its_permission() {
        let talk = Permissions::from_iter([Permission::CreateMessage]);
        let watch = Permissions::from_iter([Permission::SubscribeStreams]);
        let mic = holder(false, &[pb::VoiceStream::Microphone]);
        assert!(grants_covered(&mic, talk));
        assert!(!grants_covered(&mic, watch));
        let listener = holder(true, &[]);
        assert!(grants_covered(&listener, watch));
        assert!(!grants_covered(&listener, talk));
        let camera = holder(
            false,
            &[pb::VoiceStream::Microphone, pb::VoiceStream::Camera],
        );
        assert!(!grants_covered(&camera, talk));
        let unknown = pb::VoiceGrantHolder {
            publish_sources: vec![99],
            ..holder(false, &[])
        };
        assert!(!grants_covered(&unknown, talk), "fails closed");
    }
}
