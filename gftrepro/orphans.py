"""Imported only inside the verifier pool's fork server: it dies when the process that started it dies.

The fork server is the parent of every verifier worker, and each worker asks the kernel for SIGKILL
when the fork server dies (``gftrepro.pool.worker_loop``); this import makes the same request for
the fork server itself, so a SIGKILLed gft takes its whole pool with it. Importing this module
anywhere else would tie that process to its parent, so nothing else imports it.
"""

from gftrepro.pool import die_with_parent

die_with_parent()
