import hmac
import re
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from access.models import ApiKey, hash_key

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


def _key_query():
    """(sql, key fields, user fields, converters per column), made once per process."""
    global _KEY_QUERY
    if _KEY_QUERY is None:
        key_fields, user_fields = list(ApiKey._meta.concrete_fields), list(User._meta.concrete_fields)
        quote = connection.ops.quote_name
        columns = [f"k.{quote(f.column)}" for f in key_fields] + [f"u.{quote(f.column)}" for f in user_fields]
        sql = (f"SELECT {', '.join(columns)} FROM {ApiKey._meta.db_table} k JOIN {User._meta.db_table} u "
               f"ON u.{quote(User._meta.pk.column)} = k.user_id WHERE k.prefix = %s")
        converters = []
        for field in key_fields + user_fields:
            expression = field.get_col(field.model._meta.db_table)
            converters.append((expression, connection.ops.get_db_converters(expression)
                               + field.get_db_converters(connection)))
        _KEY_QUERY = (sql, key_fields, user_fields, converters)
    return _KEY_QUERY


def _key_with_user(prefix: str) -> ApiKey | None:
    """The key of ``prefix`` with its user, in one statement: what select_related makes, written
    out once, because every API request runs it and compiling the ORM query cost more than
    running it."""
    sql, key_fields, user_fields, converters = _key_query()
    with connection.cursor() as cursor:
        cursor.execute(sql, [prefix])
        row = cursor.fetchone()
    if row is None:
        return None
    values = []
    for (expression, functions), value in zip(converters, row):
        for convert in functions:
            value = convert(value, expression, connection)
        values.append(value)
    key = ApiKey.from_db(connection.alias, [f.attname for f in key_fields], values[:len(key_fields)])
    key.user = User.from_db(connection.alias, [f.attname for f in user_fields], values[len(key_fields):])
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
