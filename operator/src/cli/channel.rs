//! `awooop channel register|test`: set a channel's webhook at its provider (Telegram
//! `setWebhook` with a generated secret token; what to configure for LINE and Slack) and send
//! a test message through the channel's send credential.

use super::*;

pub(super) async fn channel_cmd(cmd: crate::config::ChannelCmd) -> anyhow::Result<()> {
    use crate::channels::providers::{self, SendOutcome};
    use crate::config::ChannelCmd;
    match cmd {
        ChannelCmd::Register {
            db,
            project,
            channel,
            public_url,
            channels,
            gateway,
        } => {
            channels.validate()?;
            let public_url = public_url.trim_end_matches('/').to_string();
            if !public_url.starts_with("https://") {
                anyhow::bail!(
                    "--public-url must be an https:// URL (providers only call HTTPS webhooks)"
                );
            }
            let mut p = Platform::connect(&db, None, None).await?;
            let _gw = attach_gateway(&mut p, &gateway, false, None)?;
            let pid = ProjectId::parse(&project)?;
            let hub = channel_hub(&p, &channels, &crate::metrics::Metrics::new());
            let webhook = format!("{public_url}/v1/webhooks/{project}/{channel}");
            let out = tenancy::scope(pid.clone(), async {
                let raw = hub.channel_contract(&channel).await?;
                let mut generated = false;
                if raw.provider == crate::contracts::ChannelProvider::Telegram
                    && hub.channel(&pid, &channel).await.is_err_and(|e| e.code == crate::error::ErrorCode::ChannelCredential)
                {
                    // No secret token yet: generate one and store it where the channel's
                    // verify_secret file ref points (it must lie in the project's credential
                    // folder, or it will not resolve).
                    let Some(crate::contracts::CredentialSource::File { path }) = &raw.verify_secret else {
                        anyhow::bail!(
                            "the channel's verify_secret does not resolve; make it a file ref under AWOOOP_GATEWAY_CREDENTIAL_DIR/{project}/ and register writes a generated secret token there, or store one yourself"
                        );
                    };
                    let token = hex::encode(rand::random::<[u8; 32]>());
                    write_private(std::path::Path::new(path.as_str()), token.as_bytes())?;
                    hub.invalidate();
                    generated = true;
                }
                let ch = hub.channel(&pid, &channel).await?;
                let provider = ch.provider();
                Ok::<_, anyhow::Error>(match provider {
                    crate::contracts::ChannelProvider::Telegram => {
                        let token = hub.send_credential(&pid, &ch).await?;
                        let secret = ch
                            .verify_secret
                            .clone()
                            .map(|s| s.expose().to_string())
                            .unwrap_or_default();
                        let timed = providers::telegram_set_webhook(
                            hub.http(),
                            &hub.config().urls,
                            &token,
                            &webhook,
                            &secret,
                        )
                        .await;
                        match timed.outcome {
                            SendOutcome::Sent { .. } => serde_json::json!({
                                "provider": "telegram", "webhook": webhook, "set_webhook": "ok",
                                "secret_token": if generated { "generated into the channel's verify_secret file (not printed)" } else { "the channel's verify_secret (not printed)" }
                            }),
                            other => anyhow::bail!("Telegram setWebhook failed: {other:?}"),
                        }
                    }
                    crate::contracts::ChannelProvider::Line => serde_json::json!({
                        "provider": "line", "webhook": webhook,
                        "configure": "LINE Developers console → Messaging API → Webhook URL = webhook, Use webhook = on; verify_secret = the channel secret, send_credential = a channel access token"
                    }),
                    crate::contracts::ChannelProvider::Slack => serde_json::json!({
                        "provider": "slack", "webhook": webhook,
                        "configure": "Slack app → Event Subscriptions Request URL = webhook (answers url_verification), Interactivity Request URL = webhook; verify_secret = the signing secret, send_credential = the bot token (xoxb-)"
                    }),
                    _ => serde_json::json!({
                        "provider": "api",
                        "events": format!("{public_url}/v1/platform/conversations/{channel}/events (Bearer project API key)")
                    }),
                })
            })
            .await?;
            print(&out)
        }
        ChannelCmd::Test {
            db,
            project,
            channel,
            conversation,
            text,
            channels,
            gateway,
        } => {
            channels.validate()?;
            let mut p = Platform::connect(&db, None, None).await?;
            let _gw = attach_gateway(&mut p, &gateway, false, None)?;
            let pid = ProjectId::parse(&project)?;
            let hub = channel_hub(&p, &channels, &crate::metrics::Metrics::new());
            let out = tenancy::scope(pid.clone(), async {
                let ch = hub.channel(&pid, &channel).await?;
                let token = hub.send_credential(&pid, &ch).await?;
                let parts = crate::channels::format::parts(ch.provider(), &text);
                let first = parts.into_iter().next().unwrap_or_default();
                let timed = providers::send(
                    hub.http(),
                    &hub.config().urls,
                    ch.provider(),
                    &token,
                    &conversation,
                    &first,
                    uuid::Uuid::now_v7(),
                    None,
                    &[],
                )
                .await;
                Ok::<_, anyhow::Error>(match timed.outcome {
                    SendOutcome::Sent {
                        provider_id,
                        status,
                    } => serde_json::json!({
                        "sent": true, "status": status, "provider_message_id": provider_id,
                        "latency_ms": timed.latency.as_millis() as u64
                    }),
                    other => anyhow::bail!("test message not delivered: {other:?}"),
                })
            })
            .await?;
            print(&out)
        }
    }
}
