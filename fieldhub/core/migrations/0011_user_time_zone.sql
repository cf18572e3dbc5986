-- Each person's time zone for the web app: an IANA name ('Europe/Berlin'), or NULL for "the
-- browser's own zone", the default, so a person who travels sees local times without
-- changing anything. Names are checked by fieldhub/core/time_zones.py against the zone
-- database the web app formats with; the CHECK only keeps arbitrary text out.
ALTER TABLE users ADD COLUMN time_zone text
    CHECK (time_zone ~ '^[A-Za-z][A-Za-z0-9_+/-]{0,63}$');
