"""How dates and times read in the admin (and any template's ``|date`` without a format): as the
reviewer pages write them, with their zone. The admin's lists showed "Dec. 6, 2026, 6:30 p.m." for
a Kolkata project's midnight, and nothing said it was UTC. Input formats stay Django's."""
DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
