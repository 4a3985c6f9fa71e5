from django.contrib import admin, messages
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from access.models import ApiKey
from access.services import api_key_revoke
from core.admin import SelectedIdsMixin
from core.text import plural


@admin.register(ApiKey)
class ApiKeyAdmin(SelectedIdsMixin, admin.ModelAdmin):
    """Keys are issued by `manage.py hitl_access --api-key` (shown once); here they are
    listed and revoked. Nothing about a key is editable."""

    list_display = ["prefix", "user", "name", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "user__username", "name"]
    readonly_fields = ["user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
    exclude = ["key_hash"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request, queryset):
        already = [key for key in queryset if key.revoked_at is not None]
        for key in queryset:
            api_key_revoke(key_id=key.pk, actor=request.user)  # revoking again changes nothing
        revoked = len(queryset) - len(already)
        self.message_user(request, f"Revoked {plural(revoked, 'key')}"
                          + (f"; {plural(len(already), 'was', 'were')} already revoked." if already else "."),
                          messages.SUCCESS)


# Django's own user and group lists, with the same guard on their bulk actions (delete selected).
admin.site.unregister(get_user_model())
admin.site.unregister(Group)


@admin.register(get_user_model())
class UserAdmin(SelectedIdsMixin, auth_admin.UserAdmin):
    pass


@admin.register(Group)
class GroupAdmin(SelectedIdsMixin, auth_admin.GroupAdmin):
    pass
