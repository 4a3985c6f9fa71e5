from django.contrib import admin, messages
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from access.models import ApiKey
from access.services import api_key_revoke, user_changed, user_delete, user_password_changed, user_state
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
    """Django's user admin, with the trail told: a user added, changed (sign-in, staff or superuser
    status, groups, model permissions, name), given a new password or deleted (their project
    roles revoked first, each audited as ``hitl_access --revoke-roles`` would)."""

    def save_model(self, request, obj, form, change):
        request.hitl_user_before = user_state(type(obj).objects.get(pk=obj.pk)) if change else None
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)  # groups and permissions are saved here
        user_changed(user=form.instance, actor=request.user, before=getattr(request, "hitl_user_before", None))

    def delete_model(self, request, obj):
        user_delete(user=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for user in queryset:
                user_delete(user=user, actor=request.user)

    def user_change_password(self, request, id, form_url=""):
        with transaction.atomic():
            response = super().user_change_password(request, id, form_url)
            if request.method == "POST" and response.status_code == 302:  # saved: the form redirects
                user_password_changed(user=self.get_object(request, id), actor=request.user)
        return response


@admin.register(Group)
class GroupAdmin(SelectedIdsMixin, auth_admin.GroupAdmin):
    pass
