"""What inference has cost this month, per API key and per contract, request by request.

The owner of the rule the gateway's hard monthly caps count by (docs/gateway.md
"Budgets"), for the gateway, for the pages and API that show a buyer their spend against
a cap, and for the 80 % and 100 % cap alerts (``contracts.inference_budget``, which reads
it here and nowhere else): each ``InferenceRequest`` of the month costs the larger of the
tokens billed and the tokens the gateway relayed, per direction, at its line's prices,
rounded up to a millionth of a minor unit ("micros") per request. That is never below
what billing charges, so a cap the gateway holds is never exceeded on the invoice; a
request the node has not reported yet already counts with the gateway's tokens.
Requests of a reserved line (its deployments', billed by the reservation) spend nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection

from contracts.money import MINOR_UNITS_PER_MAJOR
from contracts.terms import add_months, month_start

# Spend counts in millionths of a minor unit.
MICROS_PER_MINOR = 1_000_000

_MONTH_SPEND_SQL = """
SELECT r.api_key_id, l.contract_id, sum(ceil(
    (greatest(r.billed_input_tokens, coalesce(r.gateway_input_tokens, 0))
        * l.input_price_per_million_tokens
     + greatest(r.billed_output_tokens, coalesce(r.gateway_output_tokens, 0))
        * l.output_price_per_million_tokens) * %(micros_per_price_token)s))
FROM metering_inferencerequest r
JOIN contracts_contractline l ON l.id = r.line_id
WHERE r.issued_at >= %(since)s AND r.issued_at < %(until)s AND l.kind = 'inference' {contracts}
GROUP BY r.api_key_id, l.contract_id
"""


def micros_to_minor(micros: int) -> int:
    """Spend in whole minor units, rounded up: never shown below what a cap counts."""
    return -(-micros // MICROS_PER_MINOR)


@dataclass(frozen=True)
class MonthSpend:
    by_key_micros: dict[int, int]
    by_contract_micros: dict[int, int]

    def key_minor(self, key_id: int) -> int:
        """A key's spend in minor units, rounded up."""
        return micros_to_minor(self.by_key_micros.get(key_id, 0))

    def contract_minor(self, contract_id: int) -> int:
        return micros_to_minor(self.by_contract_micros.get(contract_id, 0))


def inference_month_spend(
    *, moment: datetime, contract_ids: Sequence[int] | None = None
) -> MonthSpend:
    """Spend of ``moment``'s UTC calendar month, every key and contract (or only those of
    ``contract_ids``), one query."""
    start = month_start(moment)
    # A price per million tokens times tokens, in micros: x minor per major x micros per
    # minor / tokens per million.
    micros_per_price_token = MINOR_UNITS_PER_MAJOR * MICROS_PER_MINOR // 1_000_000
    by_key: dict[int, int] = {}
    by_contract: dict[int, int] = {}
    params: dict[str, Any] = {
        "micros_per_price_token": micros_per_price_token,
        "since": start,
        "until": add_months(start, 1),
    }
    contracts = ""
    if contract_ids is not None:
        contracts = "AND l.contract_id = ANY(%(contract_ids)s)"
        params["contract_ids"] = list(contract_ids)
    with connection.cursor() as cursor:
        # A constant fragment; the values are parameters.
        cursor.execute(_MONTH_SPEND_SQL.format(contracts=contracts), params)
        for key_id, contract_id, spend in cursor.fetchall():
            by_key[key_id] = by_key.get(key_id, 0) + int(spend)
            by_contract[contract_id] = by_contract.get(contract_id, 0) + int(spend)
    return MonthSpend(by_key_micros=by_key, by_contract_micros=by_contract)
