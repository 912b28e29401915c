"""Great-circle distances, shared by GeoDNS steering and shard placement (pure)."""

from __future__ import annotations

import math
from typing import Final

# Mean Earth radius (IUGG), for great-circle distances.
EARTH_RADIUS_KM: Final = 6371.0088


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres between two points given in degrees.

    Haversine formula on a sphere of radius :data:`EARTH_RADIUS_KM`; accurate to
    about 0.5 % against the ellipsoid, far finer than network topology needs.
    """
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    half_dphi = (phi2 - phi1) / 2
    half_dlambda = math.radians(lon2 - lon1) / 2
    h = math.sin(half_dphi) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(half_dlambda) ** 2
    # Rounding can push h a hair above 1 for antipodal points; asin would raise.
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, max(0.0, h))))
