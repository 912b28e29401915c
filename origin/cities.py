"""Where the demo catalog's venues are: real cities grouped into serving regions.

A region is the unit the rest of the system is built around: each owns a shard
of inventory, and GeoDNS answers a client with the POPs of the region whose
centre is nearest. The centres are the network hubs a real deployment would use
(Ashburn, Frankfurt, Singapore, ...), and every city below is assigned to the
region whose centre is nearest to it by great-circle distance, so "the region
that owns an event" and "the region GeoDNS sends that city's fans to" agree.
That rule is why, for example, Amsterdam and Istanbul sit in ``eu-central``,
Dallas in ``na-east`` and Hong Kong in ``ap-southeast``.

The list is weighted toward where live events really happen: North America and
Europe carry about half of the cities, and :data:`MAJOR_MARKETS` names the
cities that get more venues than the rest. Coordinates are city centres,
rounded to two decimals (about a kilometre).

Each country's currency comes with its ISO 4217 minor unit, which is what an
integer price means: 2 for cents, 0 for yen, 3 for Kuwaiti fils.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Region:
    id: str
    name: str
    lat: float  # representative centre: the network hub that serves the region
    lon: float


@dataclass(frozen=True, slots=True)
class Currency:
    code: str  # ISO 4217
    minor_digits: int  # ISO 4217 minor unit: prices are integers of 10**-minor_digits of the currency
    per_usd: float  # an approximate exchange rate, only for making demo prices look local


@dataclass(frozen=True, slots=True)
class City:
    name: str
    country: str  # ISO 3166-1 alpha-2
    region: str  # a Region.id
    lat: float
    lon: float


REGION_DETAILS: tuple[Region, ...] = (
    Region("na-east", "North America East (Ashburn)", 39.04, -77.49),
    Region("na-west", "North America West (Los Angeles)", 34.05, -118.24),
    Region("sa-east", "South America East (Sao Paulo)", -23.55, -46.63),
    Region("eu-west", "Europe West (Paris)", 48.86, 2.35),
    Region("eu-central", "Europe Central (Frankfurt)", 50.11, 8.68),
    Region("af-south", "Africa South (Johannesburg)", -26.20, 28.05),
    Region("me-central", "Middle East Central (Dubai)", 25.20, 55.27),
    Region("ap-south", "Asia Pacific South (Mumbai)", 19.08, 72.88),
    Region("ap-northeast", "Asia Pacific Northeast (Tokyo)", 35.68, 139.69),
    Region("ap-southeast", "Asia Pacific Southeast (Singapore)", 1.35, 103.82),
    Region("oc-east", "Oceania East (Sydney)", -33.87, 151.21),
)

REGIONS: tuple[str, ...] = tuple(region.id for region in REGION_DETAILS)

REGION_BY_ID: Mapping[str, Region] = MappingProxyType({region.id: region for region in REGION_DETAILS})

CITIES: tuple[City, ...] = (
    # na-east: the US east of the Great Plains, and eastern Canada.
    City("New York", "US", "na-east", 40.71, -74.01),
    City("Boston", "US", "na-east", 42.36, -71.06),
    City("Philadelphia", "US", "na-east", 39.95, -75.17),
    City("Washington", "US", "na-east", 38.91, -77.04),
    City("Baltimore", "US", "na-east", 39.29, -76.61),
    City("Pittsburgh", "US", "na-east", 40.44, -80.00),
    City("Atlanta", "US", "na-east", 33.75, -84.39),
    City("Miami", "US", "na-east", 25.76, -80.19),
    City("Orlando", "US", "na-east", 28.54, -81.38),
    City("Tampa", "US", "na-east", 27.95, -82.46),
    City("Charlotte", "US", "na-east", 35.23, -80.84),
    City("Nashville", "US", "na-east", 36.16, -86.78),
    City("New Orleans", "US", "na-east", 29.95, -90.07),
    City("Chicago", "US", "na-east", 41.88, -87.63),
    City("Detroit", "US", "na-east", 42.33, -83.05),
    City("Cleveland", "US", "na-east", 41.50, -81.69),
    City("Columbus", "US", "na-east", 39.96, -83.00),
    City("Indianapolis", "US", "na-east", 39.77, -86.16),
    City("Minneapolis", "US", "na-east", 44.98, -93.27),
    City("St. Louis", "US", "na-east", 38.63, -90.20),
    City("Kansas City", "US", "na-east", 39.10, -94.58),
    City("Dallas", "US", "na-east", 32.78, -96.80),
    City("Houston", "US", "na-east", 29.76, -95.37),
    City("Toronto", "CA", "na-east", 43.65, -79.38),
    City("Montreal", "CA", "na-east", 45.50, -73.57),
    City("Ottawa", "CA", "na-east", 45.42, -75.70),
    # na-west: the Mountain and Pacific US, western Canada, Mexico, Hawaii.
    City("Los Angeles", "US", "na-west", 34.05, -118.24),
    City("San Francisco", "US", "na-west", 37.77, -122.42),
    City("San Jose", "US", "na-west", 37.34, -121.89),
    City("San Diego", "US", "na-west", 32.72, -117.16),
    City("Sacramento", "US", "na-west", 38.58, -121.49),
    City("Seattle", "US", "na-west", 47.61, -122.33),
    City("Portland", "US", "na-west", 45.52, -122.68),
    City("Las Vegas", "US", "na-west", 36.17, -115.14),
    City("Phoenix", "US", "na-west", 33.45, -112.07),
    City("Denver", "US", "na-west", 39.74, -104.99),
    City("Salt Lake City", "US", "na-west", 40.76, -111.89),
    City("Honolulu", "US", "na-west", 21.31, -157.86),
    City("Vancouver", "CA", "na-west", 49.28, -123.12),
    City("Calgary", "CA", "na-west", 51.05, -114.07),
    City("Edmonton", "CA", "na-west", 53.55, -113.49),
    City("Mexico City", "MX", "na-west", 19.43, -99.13),
    City("Guadalajara", "MX", "na-west", 20.66, -103.35),
    City("Monterrey", "MX", "na-west", 25.69, -100.32),
    # sa-east: Brazil and the Southern Cone.
    City("Sao Paulo", "BR", "sa-east", -23.55, -46.63),
    City("Rio de Janeiro", "BR", "sa-east", -22.91, -43.17),
    City("Belo Horizonte", "BR", "sa-east", -19.92, -43.94),
    City("Porto Alegre", "BR", "sa-east", -30.03, -51.23),
    City("Curitiba", "BR", "sa-east", -25.43, -49.27),
    City("Brasilia", "BR", "sa-east", -15.79, -47.88),
    City("Salvador", "BR", "sa-east", -12.97, -38.50),
    City("Recife", "BR", "sa-east", -8.05, -34.88),
    City("Buenos Aires", "AR", "sa-east", -34.60, -58.38),
    City("Cordoba", "AR", "sa-east", -31.42, -64.18),
    City("Rosario", "AR", "sa-east", -32.95, -60.65),
    City("Santiago", "CL", "sa-east", -33.45, -70.67),
    City("Montevideo", "UY", "sa-east", -34.90, -56.16),
    City("Asuncion", "PY", "sa-east", -25.26, -57.58),
    City("Lima", "PE", "sa-east", -12.05, -77.04),
    # eu-west: the British Isles, France, the Benelux south of the Rhine, Iberia.
    City("London", "GB", "eu-west", 51.51, -0.13),
    City("Manchester", "GB", "eu-west", 53.48, -2.24),
    City("Birmingham", "GB", "eu-west", 52.49, -1.89),
    City("Liverpool", "GB", "eu-west", 53.41, -2.98),
    City("Leeds", "GB", "eu-west", 53.80, -1.55),
    City("Glasgow", "GB", "eu-west", 55.86, -4.25),
    City("Edinburgh", "GB", "eu-west", 55.95, -3.19),
    City("Cardiff", "GB", "eu-west", 51.48, -3.18),
    City("Belfast", "GB", "eu-west", 54.60, -5.93),
    City("Dublin", "IE", "eu-west", 53.35, -6.26),
    City("Paris", "FR", "eu-west", 48.86, 2.35),
    City("Lyon", "FR", "eu-west", 45.76, 4.84),
    City("Marseille", "FR", "eu-west", 43.30, 5.37),
    City("Bordeaux", "FR", "eu-west", 44.84, -0.58),
    City("Lille", "FR", "eu-west", 50.63, 3.06),
    City("Brussels", "BE", "eu-west", 50.85, 4.35),
    City("Antwerp", "BE", "eu-west", 51.22, 4.40),
    City("Madrid", "ES", "eu-west", 40.42, -3.70),
    City("Barcelona", "ES", "eu-west", 41.39, 2.17),
    City("Valencia", "ES", "eu-west", 39.47, -0.38),
    City("Seville", "ES", "eu-west", 37.39, -5.98),
    City("Bilbao", "ES", "eu-west", 43.26, -2.93),
    City("Lisbon", "PT", "eu-west", 38.72, -9.14),
    City("Porto", "PT", "eu-west", 41.15, -8.61),
    # eu-central: Germany, the Netherlands, the Alps, Italy, the Nordics, the east.
    City("Berlin", "DE", "eu-central", 52.52, 13.40),
    City("Hamburg", "DE", "eu-central", 53.55, 9.99),
    City("Munich", "DE", "eu-central", 48.14, 11.58),
    City("Cologne", "DE", "eu-central", 50.94, 6.96),
    City("Frankfurt", "DE", "eu-central", 50.11, 8.68),
    City("Dusseldorf", "DE", "eu-central", 51.23, 6.77),
    City("Stuttgart", "DE", "eu-central", 48.78, 9.18),
    City("Amsterdam", "NL", "eu-central", 52.37, 4.90),
    City("Rotterdam", "NL", "eu-central", 51.92, 4.48),
    City("Zurich", "CH", "eu-central", 47.38, 8.54),
    City("Vienna", "AT", "eu-central", 48.21, 16.37),
    City("Prague", "CZ", "eu-central", 50.08, 14.44),
    City("Warsaw", "PL", "eu-central", 52.23, 21.01),
    City("Krakow", "PL", "eu-central", 50.06, 19.94),
    City("Budapest", "HU", "eu-central", 47.50, 19.04),
    City("Milan", "IT", "eu-central", 45.46, 9.19),
    City("Bologna", "IT", "eu-central", 44.49, 11.34),
    City("Rome", "IT", "eu-central", 41.90, 12.50),
    City("Naples", "IT", "eu-central", 40.85, 14.27),
    City("Copenhagen", "DK", "eu-central", 55.68, 12.57),
    City("Stockholm", "SE", "eu-central", 59.33, 18.07),
    City("Oslo", "NO", "eu-central", 59.91, 10.75),
    City("Helsinki", "FI", "eu-central", 60.17, 24.94),
    City("Athens", "GR", "eu-central", 37.98, 23.73),
    City("Istanbul", "TR", "eu-central", 41.01, 28.98),
    # af-south: southern and eastern Africa.
    City("Johannesburg", "ZA", "af-south", -26.20, 28.05),
    City("Pretoria", "ZA", "af-south", -25.75, 28.19),
    City("Cape Town", "ZA", "af-south", -33.92, 18.42),
    City("Durban", "ZA", "af-south", -29.86, 31.02),
    City("Gqeberha", "ZA", "af-south", -33.96, 25.60),
    City("Bloemfontein", "ZA", "af-south", -29.12, 26.21),
    City("Gaborone", "BW", "af-south", -24.63, 25.92),
    City("Windhoek", "NA", "af-south", -22.56, 17.08),
    City("Harare", "ZW", "af-south", -17.83, 31.05),
    City("Lusaka", "ZM", "af-south", -15.39, 28.32),
    City("Maputo", "MZ", "af-south", -25.97, 32.57),
    City("Nairobi", "KE", "af-south", -1.29, 36.82),
    City("Kampala", "UG", "af-south", 0.35, 32.58),
    City("Dar es Salaam", "TZ", "af-south", -6.79, 39.21),
    # me-central: the Gulf, the Levant and Egypt.
    City("Dubai", "AE", "me-central", 25.20, 55.27),
    City("Abu Dhabi", "AE", "me-central", 24.45, 54.38),
    City("Doha", "QA", "me-central", 25.29, 51.53),
    City("Riyadh", "SA", "me-central", 24.71, 46.68),
    City("Jeddah", "SA", "me-central", 21.49, 39.19),
    City("Kuwait City", "KW", "me-central", 29.38, 47.98),
    City("Manama", "BH", "me-central", 26.23, 50.59),
    City("Muscat", "OM", "me-central", 23.59, 58.41),
    City("Tel Aviv", "IL", "me-central", 32.09, 34.78),
    City("Amman", "JO", "me-central", 31.95, 35.93),
    City("Beirut", "LB", "me-central", 33.89, 35.50),
    City("Cairo", "EG", "me-central", 30.04, 31.24),
    # ap-south: the Indian subcontinent.
    City("Mumbai", "IN", "ap-south", 19.08, 72.88),
    City("Delhi", "IN", "ap-south", 28.61, 77.21),
    City("Bengaluru", "IN", "ap-south", 12.97, 77.59),
    City("Chennai", "IN", "ap-south", 13.08, 80.27),
    City("Hyderabad", "IN", "ap-south", 17.39, 78.49),
    City("Kolkata", "IN", "ap-south", 22.57, 88.36),
    City("Pune", "IN", "ap-south", 18.52, 73.86),
    City("Ahmedabad", "IN", "ap-south", 23.02, 72.57),
    City("Colombo", "LK", "ap-south", 6.93, 79.86),
    City("Dhaka", "BD", "ap-south", 23.81, 90.41),
    City("Karachi", "PK", "ap-south", 24.86, 67.01),
    City("Lahore", "PK", "ap-south", 31.55, 74.34),
    City("Kathmandu", "NP", "ap-south", 27.72, 85.32),
    # ap-northeast: Japan, Korea, Taiwan, northern and eastern China.
    City("Tokyo", "JP", "ap-northeast", 35.68, 139.69),
    City("Yokohama", "JP", "ap-northeast", 35.44, 139.64),
    City("Saitama", "JP", "ap-northeast", 35.86, 139.65),
    City("Osaka", "JP", "ap-northeast", 34.69, 135.50),
    City("Nagoya", "JP", "ap-northeast", 35.18, 136.91),
    City("Fukuoka", "JP", "ap-northeast", 33.59, 130.40),
    City("Sapporo", "JP", "ap-northeast", 43.06, 141.35),
    City("Seoul", "KR", "ap-northeast", 37.57, 126.98),
    City("Incheon", "KR", "ap-northeast", 37.46, 126.71),
    City("Busan", "KR", "ap-northeast", 35.18, 129.08),
    City("Taipei", "TW", "ap-northeast", 25.03, 121.57),
    City("Kaohsiung", "TW", "ap-northeast", 22.63, 120.30),
    City("Shanghai", "CN", "ap-northeast", 31.23, 121.47),
    City("Beijing", "CN", "ap-northeast", 39.90, 116.41),
    # ap-southeast: South-East Asia and southern China.
    City("Singapore", "SG", "ap-southeast", 1.35, 103.82),
    City("Kuala Lumpur", "MY", "ap-southeast", 3.14, 101.69),
    City("Bangkok", "TH", "ap-southeast", 13.76, 100.50),
    City("Jakarta", "ID", "ap-southeast", -6.21, 106.85),
    City("Surabaya", "ID", "ap-southeast", -7.26, 112.75),
    City("Denpasar", "ID", "ap-southeast", -8.65, 115.22),
    City("Manila", "PH", "ap-southeast", 14.60, 120.98),
    City("Cebu City", "PH", "ap-southeast", 10.32, 123.89),
    City("Ho Chi Minh City", "VN", "ap-southeast", 10.82, 106.63),
    City("Hanoi", "VN", "ap-southeast", 21.03, 105.85),
    City("Hong Kong", "HK", "ap-southeast", 22.32, 114.17),
    City("Macau", "MO", "ap-southeast", 22.20, 113.54),
    City("Shenzhen", "CN", "ap-southeast", 22.54, 114.06),
    City("Guangzhou", "CN", "ap-southeast", 23.13, 113.26),
    # oc-east: Australia and New Zealand.
    City("Sydney", "AU", "oc-east", -33.87, 151.21),
    City("Melbourne", "AU", "oc-east", -37.81, 144.96),
    City("Brisbane", "AU", "oc-east", -27.47, 153.03),
    City("Gold Coast", "AU", "oc-east", -28.02, 153.40),
    City("Perth", "AU", "oc-east", -31.95, 115.86),
    City("Adelaide", "AU", "oc-east", -34.93, 138.60),
    City("Canberra", "AU", "oc-east", -35.28, 149.13),
    City("Hobart", "AU", "oc-east", -42.88, 147.33),
    City("Auckland", "NZ", "oc-east", -36.85, 174.76),
    City("Wellington", "NZ", "oc-east", -41.29, 174.78),
    City("Christchurch", "NZ", "oc-east", -43.53, 172.64),
)

# The cities that fill the big tours' routings; the catalog gives them several
# times the venues of a smaller city.
MAJOR_MARKETS: frozenset[str] = frozenset(
    {
        "New York", "Los Angeles", "Chicago", "Toronto", "Atlanta", "Nashville",
        "Miami", "Las Vegas", "San Francisco", "Mexico City", "Sao Paulo",
        "Rio de Janeiro", "Buenos Aires", "Santiago", "London", "Manchester",
        "Glasgow", "Dublin", "Paris", "Madrid", "Barcelona", "Berlin", "Hamburg",
        "Munich", "Amsterdam", "Milan", "Stockholm", "Johannesburg", "Cape Town",
        "Dubai", "Mumbai", "Delhi", "Tokyo", "Osaka", "Seoul", "Singapore",
        "Bangkok", "Manila", "Jakarta", "Hong Kong", "Sydney", "Melbourne",
        "Auckland",
    }
)  # fmt: skip


# (code, minor digits, units per US dollar, countries that price tickets in it)
_CURRENCY_TABLE: tuple[tuple[str, int, float, str], ...] = (
    ("USD", 2, 1.0, "US ZW LB"),  # Zimbabwe and Lebanon price live events in dollars
    ("CAD", 2, 1.36, "CA"),
    ("MXN", 2, 17.0, "MX"),
    ("BRL", 2, 5.0, "BR"),
    ("ARS", 2, 900.0, "AR"),
    ("CLP", 0, 950.0, "CL"),
    ("UYU", 2, 39.0, "UY"),
    ("PYG", 0, 7_500.0, "PY"),
    ("PEN", 2, 3.7, "PE"),
    ("GBP", 2, 0.79, "GB"),
    ("EUR", 2, 0.92, "IE FR BE ES PT DE NL AT IT FI GR"),
    ("CHF", 2, 0.88, "CH"),
    ("CZK", 2, 23.0, "CZ"),
    ("PLN", 2, 4.0, "PL"),
    ("HUF", 2, 360.0, "HU"),
    ("DKK", 2, 6.9, "DK"),
    ("SEK", 2, 10.5, "SE"),
    ("NOK", 2, 10.7, "NO"),
    ("TRY", 2, 32.0, "TR"),
    ("ZAR", 2, 18.5, "ZA"),
    ("BWP", 2, 13.6, "BW"),
    ("NAD", 2, 18.5, "NA"),
    ("ZMW", 2, 26.0, "ZM"),
    ("MZN", 2, 64.0, "MZ"),
    ("KES", 2, 130.0, "KE"),
    ("UGX", 0, 3_750.0, "UG"),
    ("TZS", 2, 2_600.0, "TZ"),
    ("AED", 2, 3.67, "AE"),
    ("QAR", 2, 3.64, "QA"),
    ("SAR", 2, 3.75, "SA"),
    ("KWD", 3, 0.31, "KW"),
    ("BHD", 3, 0.376, "BH"),
    ("OMR", 3, 0.385, "OM"),
    ("ILS", 2, 3.7, "IL"),
    ("JOD", 3, 0.71, "JO"),
    ("EGP", 2, 48.0, "EG"),
    ("INR", 2, 83.0, "IN"),
    ("LKR", 2, 300.0, "LK"),
    ("BDT", 2, 118.0, "BD"),
    ("PKR", 2, 280.0, "PK"),
    ("NPR", 2, 133.0, "NP"),
    ("JPY", 0, 150.0, "JP"),
    ("KRW", 0, 1_350.0, "KR"),
    ("TWD", 2, 32.0, "TW"),
    ("CNY", 2, 7.2, "CN"),
    ("HKD", 2, 7.8, "HK"),
    ("MOP", 2, 8.05, "MO"),
    ("SGD", 2, 1.35, "SG"),
    ("MYR", 2, 4.7, "MY"),
    ("THB", 2, 36.0, "TH"),
    ("IDR", 2, 16_000.0, "ID"),
    ("PHP", 2, 57.0, "PH"),
    ("VND", 0, 25_000.0, "VN"),
    ("AUD", 2, 1.52, "AU"),
    ("NZD", 2, 1.65, "NZ"),
)

CURRENCIES: Mapping[str, Currency] = MappingProxyType(
    {code: Currency(code, digits, per_usd) for code, digits, per_usd, _ in _CURRENCY_TABLE}
)

CURRENCY_BY_COUNTRY: Mapping[str, str] = MappingProxyType(
    {country: code for code, _, _, countries in _CURRENCY_TABLE for country in countries.split()}
)


def cities_in(region_id: str) -> tuple[City, ...]:
    """The cities of one region, in table order; empty for an unknown id."""
    return tuple(city for city in CITIES if city.region == region_id)


def currency_of(country: str) -> Currency:
    """The currency tickets are priced in for an ISO 3166 alpha-2 country; US dollars when unknown."""
    return CURRENCIES[CURRENCY_BY_COUNTRY.get(country, "USD")]
