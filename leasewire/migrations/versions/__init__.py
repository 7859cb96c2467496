"""Alembic revisions of ipamd. This file makes the directory a package, so that
the revisions ship in the wheel; Alembic skips it when it loads revisions."""
