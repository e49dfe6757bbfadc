"""REST API for buyers: contracts, lines, allocations, usage (search, quote and reserve are
the front door's: ``marketplace.api``).

Thin views: an input serializer parses, ``tenancy`` scopes (another tenant's contract is a
404), a service or selector does the work, an output serializer renders. Buyer endpoints
need a buyer organization (else 404, as the pages); reserving needs an operator role (an
API key acts as a member at most). Money is returned both as integer minor units and as a
decimal string in the contract's currency.
"""

from contracts.api.views import (
    BUYER_PERMISSIONS,
    BUYER_READ_PERMISSIONS,
    BuyerOnly,
    ContractAllocationListApi,
    ContractDetailApi,
    ContractLineListApi,
    ContractListApi,
    ContractUsageApi,
)

__all__ = [
    "BUYER_PERMISSIONS",
    "BUYER_READ_PERMISSIONS",
    "BuyerOnly",
    "ContractAllocationListApi",
    "ContractDetailApi",
    "ContractLineListApi",
    "ContractListApi",
    "ContractUsageApi",
]
