"""KFP components: one thin, typed wrapper per pipeline stage around ``testprio.stages``,
and ``configure_task``, which gives a task of any pipeline the cluster settings that the
``prioritize`` pipeline gives that stage (``components.cluster``).

Every component runs in one of our images (``components.images``), which already hold the
pinned ``kfp`` the executor needs: ``install_kfp_package=False`` keeps KFP from running
``pip install kfp`` at the start of every task, which would need PyPI from the cluster
and a writable site-packages (the images run as a non-root user).
"""

from components.cluster import ClusterSettings, configure_task

__all__ = ["ClusterSettings", "configure_task"]
