"""Drives the service through a client generated from its own /openapi.json
(openapi-python-client): every operation of the document is called at least once, through a
purchase, a declined card, a refund, the listings, a waiting room, an organizer's webhook endpoint (a local
receiver), the operators' views and the admin's dead letter flow (two poison messages produced onto the bus, one resolved, one discarded).

Usage: client_flow.py BASE_URL KAFKA_BROKERS TOPIC_PREFIX ADMIN_EMAIL ADMIN_PASSWORD
(run by tests/conformance/run.sh, with the generated package `ticketing_client` importable).
"""

import datetime
import http.server
import sys
import threading
import time
import uuid

from confluent_kafka import Producer
from ticketing_client import AuthenticatedClient, Client
from ticketing_client.api.admin import (
    audit_log, dead_letter_stats, discard_dead_letter, get_dead_letter, list_dead_letters,
    resolve_dead_letter, retry_dead_letter, sales, system,
)
from ticketing_client.api.analytics import customer_history, event_sales
from ticketing_client.api.auth import login, logout, me, register
from ticketing_client.api.events import (
    availability, cancel_event, close_sales, create_event, get_event, list_events, open_sales,
    publish, update_event,
)
from ticketing_client.api.operations import health, metrics, ready
from ticketing_client.api.payments import create_payment, get_payment, payments_of_user, refund_payment
from ticketing_client.api.queue import get_queue, join_queue, my_ticket, put_queue
from ticketing_client.api.reservations import (
    cancel_reservation, create_reservation, get_reservation, list_reservations,
)
from ticketing_client.api.webhooks import (
    create_webhook, delete_webhook, get_webhook, list_deliveries, list_webhooks, redeliver,
    rotate_secret,
)
from ticketing_client.models import (
    CreateEventRequest, CreatePaymentRequest, CreateReservationRequest, CreateWebhookRequest,
    DiscardRequest, DlqStatus,
    ListEventsStatus, LoginRequest, PaymentMethod, QueueSettingsRequest, RefundRequest,
    RegisterRequest, RegisterRole,
    ResolveRequest, SectionInput, UpdateEventRequest, VenueInput,
)

BASE, BROKERS, PREFIX, ADMIN_EMAIL, ADMIN_PASSWORD = sys.argv[1:6]
CALLED = set()


def call(module, expected, **kwargs):
    """Calls one generated operation, checks the status, returns the parsed answer."""
    response = module.sync_detailed(**kwargs)
    CALLED.add(module.__name__.rsplit(".", 1)[-1])
    assert response.status_code == expected, (
        f"{module.__name__}: {response.status_code} (expected {expected}): {response.content!r}"
    )
    return response.parsed


def eventually(what, probe, seconds=30):
    """Polls `probe` until it returns a true value (the bus-fed views follow moments later)."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.1)


def account(anonymous, email, password, role=None):
    body = RegisterRequest(email=email, password=password)
    if role:
        body.role = role
    call(register, 201, client=anonymous, body=body)
    token = call(login, 200, client=anonymous, body=LoginRequest(email=email, password=password))
    return AuthenticatedClient(base_url=BASE, token=token.token), token.user_id


def receiver():
    """A webhook receiver on loopback that answers every delivery 200; returns its URL."""
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/hooks"


def poison(producer, stream):
    """A reservation event no consumer can decode: the consumer dead-letters it."""
    headers = {
        "event-type": "reservation.placed", "event-version": "1", "stream-id": stream,
        "stream-version": "1", "position": "1",
        "sale-id": "00000000-0000-0000-0000-000000000001",
        "recorded-at": "2030-01-01T09:00:00Z", "correlation-id": "conformance",
    }
    producer.produce(f"{PREFIX}reservations", key=stream, value=b"\xde\xad\xbe\xef",
                     headers=list(headers.items()))
    assert producer.flush(10) == 0, "the broker did not take the poison message"


def main():
    anonymous = Client(base_url=BASE)
    call(health, 200, client=anonymous)
    call(ready, 200, client=anonymous)
    run = uuid.uuid4().hex[:8]

    # An organizer creates, edits, publishes and opens an event.
    org, org_id = account(anonymous, f"org-{run}@example.com", "organizer-pw", RegisterRole.ORGANIZER)
    call(me, 200, client=org)
    starts = datetime.datetime(2030, 6, 1, 19, tzinfo=datetime.timezone.utc)
    event = call(create_event, 201, client=org, body=CreateEventRequest(
        name="Rust Fest", venue=VenueInput(name="Main Hall", address="1 Harbour Road"),
        starts_at=starts, ends_at=starts + datetime.timedelta(hours=4),
        sections=[SectionInput(name="floor", capacity=100, price_cents=5000)],
        max_tickets_per_customer=4))
    assert event.max_tickets_per_customer == 4, event
    event = call(update_event, 200, client=org, id=event.id, if_match=f'"{event.version}"',
                 body=UpdateEventRequest(description="The annual gathering"))
    call(publish, 200, client=org, id=event.id)
    call(open_sales, 200, client=org, id=event.id)
    hook = call(create_webhook, 201, client=org, body=CreateWebhookRequest(
        url=receiver(), event_types=["*"], event_id=event.id))
    assert hook.secret.startswith("whsec_"), hook

    # A customer buys two seats; a declined card answers 402 and the hold stays.
    ann, ann_id = account(anonymous, f"ann-{run}@example.com", "customer-pw")
    found = call(list_events, 200, client=ann, status=ListEventsStatus.ON_SALE, owner_id=org_id)
    assert [e.id for e in found.items] == [event.id], found
    call(get_event, 200, client=ann, id=event.id)
    held = call(create_reservation, 201, client=ann, idempotency_key=f"hold-{run}",
                body=CreateReservationRequest(event_id=event.id, section="floor", quantity=2))
    call(create_payment, 402, client=ann, body=CreatePaymentRequest(
        reservation_id=held.reservation_id,
        payment_method=PaymentMethod(type_="card", token="tok_chargeDeclined")))
    assert call(get_reservation, 200, client=ann, id=held.reservation_id).status == "pending"
    paid = call(create_payment, 201, client=ann, idempotency_key=f"pay-{run}",
                body=CreatePaymentRequest(reservation_id=held.reservation_id,
                                          payment_method=PaymentMethod(type_="card", token="tok_visa")))
    assert call(get_reservation, 200, client=ann, id=held.reservation_id).status == "confirmed"
    call(create_reservation, 409, client=ann,  # 2 held + 3 > 4: customer-limit
         body=CreateReservationRequest(event_id=event.id, section="floor", quantity=3))
    seats = call(availability, 200, client=ann, id=event.id).sections[0]
    assert (seats.available, seats.held, seats.sold) == (98, 0, 2), seats
    call(get_payment, 200, client=ann, id=paid.payment_id)
    assert call(payments_of_user, 200, client=ann, user_id=ann_id).total_count == 2
    assert call(list_reservations, 200, client=ann).total_count == 1

    # The bus-fed views follow; then a refund puts the seats back.
    eventually("sales figures", lambda: call(event_sales, 200, client=org, id=event.id).tickets_sold == 2)
    eventually("purchase history", lambda: call(customer_history, 200, client=ann, id=ann_id).total_count >= 1)
    assert call(refund_payment, 200, client=ann, id=paid.payment_id,
                body=RefundRequest(reason="cannot come")).status == "refunded"
    seats = call(availability, 200, client=ann, id=event.id).sections[0]
    assert (seats.available, seats.sold) == (100, 0), seats

    # The organizer's endpoint heard of the sale; one delivery is sent again, the secret rotated.
    delivered = eventually("a delivered webhook", lambda: [
        d for d in call(list_deliveries, 200, client=org, id=hook.id).items if d.status == "succeeded"
    ])
    call(redeliver, 202, client=org, id=hook.id, delivery_id=delivered[0].id)
    call(get_webhook, 200, client=org, id=hook.id)
    assert call(list_webhooks, 200, client=org).total_count == 1
    assert call(rotate_secret, 200, client=org, id=hook.id).secret.startswith("whsec_")
    call(delete_webhook, 204, client=org, id=hook.id)

    # The organizer puts the sale behind a waiting room: a hold needs a pass; ann joins (once),
    # is admitted within a second or two at this rate, and holds with her pass.
    call(put_queue, 200, client=org, id=event.id,
         body=QueueSettingsRequest(enabled=True, admit_per_minute=1000000, pass_ttl_seconds=600))
    call(create_reservation, 403, client=ann,
         body=CreateReservationRequest(event_id=event.id, section="floor", quantity=1))
    ticket = call(join_queue, 201, client=ann, id=event.id)
    assert call(join_queue, 200, client=ann, id=event.id).ticket_id == ticket.ticket_id
    assert call(get_queue, 200, client=anonymous, id=event.id).enabled
    admitted = eventually("admission", lambda: (
        lambda mine: mine if mine.status == "admitted" else None
    )(call(my_ticket, 200, client=ann, id=event.id)))
    queued = call(create_reservation, 201, client=ann, queue_pass=admitted.pass_,
                  body=CreateReservationRequest(event_id=event.id, section="floor", quantity=1))
    assert call(cancel_reservation, 200, client=ann, id=queued.reservation_id).status == "cancelled"
    call(put_queue, 200, client=org, id=event.id,
         body=QueueSettingsRequest(enabled=False, admit_per_minute=1))

    # A second hold is cancelled; the event closes sales and is cancelled.
    other = call(create_reservation, 201, client=ann,
                 body=CreateReservationRequest(event_id=event.id, section="floor", quantity=1))
    assert call(cancel_reservation, 200, client=ann, id=other.reservation_id).status == "cancelled"
    call(close_sales, 200, client=org, id=event.id)
    call(cancel_event, 204, client=org, id=event.id)

    # The admin: dashboards, audit trail, and the dead letter flow on two poison messages.
    token = call(login, 200, client=anonymous,
                 body=LoginRequest(email=ADMIN_EMAIL, password=ADMIN_PASSWORD))
    admin = AuthenticatedClient(base_url=BASE, token=token.token)
    call(system, 200, client=admin)
    call(sales, 200, client=admin)
    assert call(audit_log, 200, client=admin, action="payment.refund").total_count >= 1
    producer = Producer({"bootstrap.servers": BROKERS})
    for stream in (f"reservation-{uuid.uuid4()}", f"reservation-{uuid.uuid4()}"):
        poison(producer, stream)
    pending = eventually("two dead letters", lambda: (
        lambda page: page.items if page.total_count >= 2 else None
    )(call(list_dead_letters, 200, client=admin, status=DlqStatus.PENDING)))
    first, second = pending[0].id, pending[1].id
    call(get_dead_letter, 200, client=admin, id=first)
    call(retry_dead_letter, 422, client=admin, id=first)  # still undecodable: retry-failed
    assert call(resolve_dead_letter, 200, client=admin, id=first,
                body=ResolveRequest(notes="producer fixed")).status == "resolved"
    assert call(discard_dead_letter, 200, client=admin, id=second,
                body=DiscardRequest(reason="test message")).status == "discarded"
    stats = call(dead_letter_stats, 200, client=admin)
    assert (stats.resolved, stats.discarded) == (1, 1), stats
    call(metrics, 200, client=anonymous)

    call(logout, 204, client=ann)
    call(me, 401, client=ann)

    import pkgutil
    import ticketing_client.api as api
    every = {
        module.name
        for tag in pkgutil.iter_modules(api.__path__)
        for module in pkgutil.iter_modules([f"{api.__path__[0]}/{tag.name}"])
    }
    assert every == CALLED, f"operations never called: {sorted(every - CALLED)}"
    print(f"generated client: all {len(every)} operations called; purchase, declined card, "
          f"refund, listings, webhooks, the waiting room and the dead letter flow completed")


if __name__ == "__main__":
    main()
