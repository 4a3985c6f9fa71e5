from django.contrib.auth.backends import ModelBackend


class StaffSessionBackend(ModelBackend):
    """Django's ModelBackend, with a session that holds only while its user is staff (and active,
    as before). People sign in through the admin's login, which lets only staff in; a user whose
    staff status was taken away kept their open sessions: the reviewer pages, the events
    websocket and the API's session authentication went on deciding for them until the session
    expired. Their next request is now anonymous (the pages send them to the login page).
    API keys are not sessions: an agent (not staff) keeps using its key."""

    def get_user(self, user_id):
        user = super().get_user(user_id)
        return user if user is not None and user.is_staff else None

    async def aget_user(self, user_id):
        user = await super().aget_user(user_id)
        return user if user is not None and user.is_staff else None
