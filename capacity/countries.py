"""ISO 3166-1 alpha-2 country codes (the 249 officially assigned ones), for site validation."""

from __future__ import annotations

ISO_3166_ALPHA2 = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO
    BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ
    DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP
    GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG
    KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML
    MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE
    PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL
    SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM
    US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
    """.split()  # noqa: SIM905 - a table people can read and check
)


def is_country_code(value: str) -> bool:
    return value in ISO_3166_ALPHA2


# The regions a site in each country may be listed under (region values of
# ``capacity.models.Region``). Countries that straddle two regions (Russia, Türkiye,
# Egypt, the Caucasus, Cyprus, Sudan, remote territories) accept either. Central America
# and the Caribbean are North America.
_REGION_COUNTRIES = {
    "north-america": """
        US CA MX GL PM BM BZ GT SV HN NI CR PA AG AI AW BB BL BQ BS CU CW DM DO GD GP HT
        JM KN KY LC MF MQ MS PR SX TC TT VC VG VI UM
    """,
    "south-america": "AR BO BR CL CO EC FK GF GY PE PY SR UY VE GS BV AQ",
    "europe": """
        AD AL AT AX BA BE BG BY CH CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT
        JE LI LT LU LV MC MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA TR CY GE
        AM AZ
    """,
    "middle-east": "AE BH IL IQ IR JO KW LB OM PS QA SA SY YE TR CY EG GE AM AZ",
    "east-africa": "BI DJ ER ET KE MG MU MW MZ RW SC SO SS TZ UG ZM ZW KM RE YT SD IO TF",
    "africa": """
        AO BF BJ BW CD CF CG CI CM CV DZ EH GA GH GM GN GQ GW LR LS LY MA ML MR NA NE NG
        SH SL SN ST SZ TD TG TN ZA EG SD
    """,
    "asia-pacific": """
        AF AS AU BD BN BT CC CN CK CX FJ FM GU HK HM ID IN JP KG KH KI KP KR KZ LA LK MH
        MM MN MO MP MV MY NC NF NP NR NU NZ PF PG PH PK PN PW SB SG TH TJ TK TL TM TO TV
        TW UZ VN VU WF WS RU IO TF AQ
    """,
}
COUNTRY_REGIONS: dict[str, frozenset[str]] = {
    country: frozenset(
        region for region, countries in _REGION_COUNTRIES.items() if country in countries.split()
    )
    for country in ISO_3166_ALPHA2
}


def regions_of(country: str) -> frozenset[str]:
    """The regions a site in ``country`` may be listed under (empty for an unknown code)."""
    return COUNTRY_REGIONS.get(country, frozenset())
