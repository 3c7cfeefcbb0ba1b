"""``certbroker doctor`` (the ``CheckDomain`` RPC): every pre-flight check of a domain, now.

``runner`` runs the checks under a deadline and a rate limit, ``checks`` holds
one function per check, ``schedule`` words the next scheduled action,
``report`` the values returned, ``limit`` the admission rules.
"""

from certbroker.doctor.report import Check, Report, Verdict
from certbroker.doctor.runner import Doctor, DoctorPolicy

__all__ = ["Check", "Doctor", "DoctorPolicy", "Report", "Verdict"]
