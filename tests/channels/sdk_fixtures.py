#!/usr/bin/env python3
"""Builds signed webhook requests with the providers' official SDKs, for the channel tests.

Reads a JSON list of specs on stdin and prints a JSON list of {"headers": {...}, "body": "..."}:
- {"provider": "telegram", "secret": S, "update": {...}}: the Update JSON is built from
  python-telegram-bot objects (Update/Message/Chat/User/CallbackQuery), the secret goes into
  X-Telegram-Bot-Api-Secret-Token (what setWebhook's secret_token makes Telegram send).
- {"provider": "line", "secret": S, "events": [...]}: the body is a line-bot-sdk
  CallbackRequest; X-Line-Signature is base64(HMAC-SHA256(secret, body)), checked with the
  SDK's SignatureValidator before it is printed.
- {"provider": "slack", "secret": S, "timestamp": T, "body": {...} | "form": {...}}: JSON
  (Events API) or form-encoded payload= (interactivity); X-Slack-Signature from slack_sdk's
  SignatureVerifier.generate_signature.
"""
import base64, datetime, hashlib, hmac, json, sys, urllib.parse

from linebot.v3.webhook import SignatureValidator
from linebot.v3 import webhooks as lw
from slack_sdk.signature import SignatureVerifier
import telegram as tg

EPOCH = datetime.datetime(2026, 11, 28, tzinfo=datetime.timezone.utc)


def telegram(spec):
    u = spec["update"]
    kind = u.get("kind", "message")
    chat = tg.Chat(id=u.get("chat_id", 1), type=u.get("chat_type", "private"))
    user = tg.User(id=u.get("user_id", 1), first_name="T", is_bot=False)
    msg = tg.Message(message_id=u.get("message_id", 1), date=EPOCH, chat=chat,
                     from_user=None if kind == "channel_post" else user, text=u.get("text"))
    args = {"update_id": u["update_id"]}
    if kind == "message":
        args["message"] = msg
    elif kind == "edited_message":
        args["edited_message"] = msg
    elif kind == "channel_post":
        args["channel_post"] = msg
    elif kind == "callback_query":
        args["callback_query"] = tg.CallbackQuery(id=str(u["update_id"]), from_user=user,
                                                  chat_instance="ci", data=u.get("data"), message=msg)
    body = tg.Update(**args).to_json()
    if kind == "unknown":
        d = json.loads(body)
        d["poll"] = {"id": "p", "question": "?", "options": []}
        body = json.dumps(d)
    return {"headers": {"X-Telegram-Bot-Api-Secret-Token": spec["secret"],
                        "Content-Type": "application/json"}, "body": body}


def line_event(e):
    source = (lw.GroupSource(type="group", groupId=e["group_id"], userId=e.get("user_id"))
              if e.get("group_id") else lw.UserSource(type="user", userId=e.get("user_id", "U1")))
    common = dict(timestamp=1764288000000, source=source, mode="active",
                  webhookEventId=e["webhook_event_id"],
                  deliveryContext=lw.DeliveryContext(isRedelivery=e.get("redelivery", False)))
    kind = e.get("kind", "message")
    if kind == "message":
        return lw.MessageEvent(type="message", replyToken=e.get("reply_token", "rt"),
                               message=lw.TextMessageContent(type="text", id="m1", text=e["text"],
                                                             quoteToken="q"), **common)
    if kind == "postback":
        return lw.PostbackEvent(type="postback", replyToken=e.get("reply_token", "rt"),
                                postback=lw.PostbackContent(data=e["data"]), **common)
    if kind == "follow":
        return lw.FollowEvent(type="follow", replyToken=e.get("reply_token", "rt"), **common)
    if kind == "join":
        return lw.JoinEvent(type="join", replyToken=e.get("reply_token", "rt"), **common)
    raise SystemExit(f"unknown LINE event kind {kind}")


def line(spec):
    req = lw.CallbackRequest(destination="U" + "0" * 32, events=[line_event(e) for e in spec["events"]])
    body = req.to_json()
    sig = base64.b64encode(hmac.new(spec["secret"].encode(), body.encode(), hashlib.sha256).digest()).decode()
    assert SignatureValidator(spec["secret"]).validate(body, sig)
    return {"headers": {"X-Line-Signature": sig, "Content-Type": "application/json"}, "body": body}


def slack(spec):
    if "form" in spec:
        body = urllib.parse.urlencode({"payload": json.dumps(spec["form"])})
        ctype = "application/x-www-form-urlencoded"
    else:
        body = json.dumps(spec["body"])
        ctype = "application/json"
    ts = str(spec["timestamp"])
    sig = SignatureVerifier(spec["secret"]).generate_signature(timestamp=ts, body=body)
    assert SignatureVerifier(spec["secret"], clock=type("C", (), {"now": lambda self: float(ts)})()).is_valid(
        body=body, timestamp=ts, signature=sig)
    headers = {"X-Slack-Signature": sig, "X-Slack-Request-Timestamp": ts, "Content-Type": ctype}
    if "retry_num" in spec:
        headers["X-Slack-Retry-Num"] = str(spec["retry_num"])
    return {"headers": headers, "body": body}


out = []
for spec in json.load(sys.stdin):
    out.append({"telegram": telegram, "line": line, "slack": slack}[spec["provider"]](spec))
json.dump(out, sys.stdout)
