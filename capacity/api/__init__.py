"""REST API of the capacity domain: partners' sites, nodes, windows, offers; agent enrollment.

Thin views: an input serializer parses, ``tenancy`` scopes (another tenant's object is a
404), a service or selector does the work, an output serializer renders. Partner
endpoints need a partner organization; writes need an operator role (an API key acts
as a member at most, never above its creator's current role). ``POST /agents/enroll`` is the one unauthenticated endpoint: the one-time
code is the credential, and it is throttled.
"""

from capacity.api.views import (
    AgentEnrollApi,
    NodeDetailApi,
    NodeEnrollmentCodeApi,
    NodeListCreateApi,
    NodeWindowListCreateApi,
    OfferDetailApi,
    OfferListCreateApi,
    SiteDetailApi,
    SiteListCreateApi,
    WindowDetailApi,
)

__all__ = [
    "AgentEnrollApi",
    "NodeDetailApi",
    "NodeEnrollmentCodeApi",
    "NodeListCreateApi",
    "NodeWindowListCreateApi",
    "OfferDetailApi",
    "OfferListCreateApi",
    "SiteDetailApi",
    "SiteListCreateApi",
    "WindowDetailApi",
]
