#!/usr/bin/env python3
"""A client generated from StockNet's OpenAPI document, used as an integrator would: create a
user, place a limit order with their key, read it back, cancel it, and see it cancelled.

Generate the client from a running frontend's document, then run this with it importable:

    openapi-python-client generate --url http://127.0.0.1:8080/openapi.json --output-path client
    PYTHONPATH=client python3 examples/python-client/trade.py http://127.0.0.1:8080

.ci/fuzz does exactly this against a fresh `stocknet up`, so the document cannot drift from
the server without CI failing here. Exits non-zero on any unexpected answer.
"""
import sys
import uuid

from stock_net_client import AuthenticatedClient, Client
from stock_net_client.api.orders import cancel_order, get_order, place_order
from stock_net_client.api.users import create_user
from stock_net_client.models import PlaceOrder, Side, Status


def expect(response, status):
    if response.status_code != status:
        sys.exit(f"expected {status}, got {response.status_code}: {response.content!r}")
    return response.parsed.data


def main(base_url):
    anonymous = Client(base_url=base_url, raise_on_unexpected_status=True)
    user = expect(create_user.sync_detailed(client=anonymous), 201)
    print(f"user {user.user_id} created")
    trader = AuthenticatedClient(base_url=base_url, token=user.api_key,
                                 raise_on_unexpected_status=True)

    # A bid far below the market rests on the book.
    order = PlaceOrder(name="GameStart", quantity=3, type_=Side.BUY, price=1.25)
    key = f"example-{uuid.uuid4()}"
    placed = expect(place_order.sync_detailed(client=trader, body=order, idempotency_key=key), 200)
    number = placed.transaction_number
    assert placed.status == Status.OPEN, placed
    # A retry under the same key is the same order, not a second one.
    again = expect(place_order.sync_detailed(client=trader, body=order, idempotency_key=key), 200)
    assert again.transaction_number == number, again
    print(f"order {number} placed: {placed.status.value}")

    read = expect(get_order.sync_detailed(number, client=anonymous), 200)
    assert (read.number, read.name, read.quantity, read.price) == (number, "GameStart", 3, 1.25), read
    assert read.status == Status.OPEN, read

    cancelled = expect(cancel_order.sync_detailed(number, client=trader), 200)
    assert cancelled.order.status == Status.CANCELLED, cancelled
    read = expect(get_order.sync_detailed(number, client=anonymous), 200)
    assert read.status == Status.CANCELLED, read
    print(f"order {number} cancelled")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080")
