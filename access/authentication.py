import hmac
import re
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from access.models import ApiKey, hash_key
from core.rawrows import Columns, db, kept_cursor
from projects.permissions import project_content_type_id, project_perms_sql, remember_project_perms

User = get_user_model()
LAST_USED_RESOLUTION = timedelta(seconds=60)
KEY_RE = re.compile(r"hitl_(?P<prefix>[0-9a-f]{1,16})_[A-Za-z0-9_-]{1,128}")


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer hitl_<prefix>_<secret>``. A header that is not Bearer is
    left to the next class (session auth); a bad, revoked or inactive key is 401."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <api key>'.")
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None
        key = api_key_check(raw)
        return key.user, key

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "access.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API key from `manage.py hitl_access`."}


_KEY_QUERY = None


def _key_with_user(prefix: str) -> ApiKey | None:
    """The key of ``prefix`` with its user, in one hand-written statement (core.rawrows): every
    API request runs it, and compiling the ORM query cost more than running it. The same
    statement reads the user's project roles (projects.permissions), which nearly every request
    checks next: they are kept for the request, so authentication and the permission checks cost
    one trip to the database together."""
    global _KEY_QUERY
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    if _KEY_QUERY is None:
        key, user = Columns(ApiKey, "k"), Columns(User, "u")
        quote = connection.ops.quote_name
        table = quote(ApiKey._meta.db_table)
        width = len(key) + len(user)
        owner = f"(SELECT kk.user_id FROM {table} kk WHERE kk.prefix = %s)"
        _KEY_QUERY = (f"SELECT {key.sql}, {user.sql}, NULL, NULL FROM {table} k "
                      f"JOIN {quote(User._meta.db_table)} u ON u.{quote(User._meta.pk.column)} = k.user_id "
                      f"WHERE k.prefix = %s "
                      f"UNION ALL SELECT {', '.join(['NULL'] * width)}, r.* FROM ({project_perms_sql(owner)}) r",
                      key, user)
    sql, key_columns, user_columns = _KEY_QUERY
    with kept_cursor(connection) as cursor:
        cursor.execute(sql, [prefix, prefix, prefix, project_content_type_id()])
        rows = cursor.fetchall()
    width = len(key_columns) + len(user_columns)
    found = [row for row in rows if row[0] is not None]
    if not found:
        return None
    row = found[0]
    key = key_columns.build(row[:len(key_columns)])
    key.user = user_columns.build(row[len(key_columns):width])
    remember_project_perms(key.user.pk, [r[width:] for r in rows if r[0] is None])
    return key


def api_key_check(raw: str) -> ApiKey:
    """The active key for a raw ``hitl_...`` string, with its user; AuthenticationFailed if
    it is malformed, unknown, revoked or its user inactive. Records the last use."""
    match = KEY_RE.fullmatch(raw)
    if match is None:
        raise exceptions.AuthenticationFailed("Invalid API key.")
    key = _key_with_user(match["prefix"])
    if key is None or not hmac.compare_digest(key.key_hash, hash_key(raw)):
        raise exceptions.AuthenticationFailed("Invalid API key.")
    if key.revoked_at is not None:
        raise exceptions.AuthenticationFailed("This API key has been revoked.")
    if not key.user.is_active:
        raise exceptions.AuthenticationFailed("This user is inactive.")
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)  # bookkeeping, at most once a minute
    return key
