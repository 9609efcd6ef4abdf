"""Firmware profiles: device identity -> expected behaviour and known advisories, offline.

``firmware_profiles/`` (data, one TOML file per device family, schema in its README) is read by
:mod:`.match`; :mod:`.schema` validates it, :mod:`.versions` compares vendor version strings,
:mod:`.csaf` generates it from CISA CSAF advisories plus hand-checked mapping tables,
:mod:`.assess` turns matches into findings and asset attributes, and :mod:`.bundle` installs a
signed update into the state directory.
"""
