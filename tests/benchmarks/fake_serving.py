"""Stand-ins for serving_bench's ServerProcess and ClientDriver with what every fake shares: always healthy, no
log, nothing to stop. Tests subclass them and override start / log_text / run."""


class StubServer:
    def __init__(self, cmd, port, log_path, env=None):
        self.cmd = cmd

    def start(self):
        pass

    def wait_healthy(self, timeout_s, poll_s=2.0):
        return True, "healthy after 0 s"

    def healthy(self):
        return True

    def log_text(self):
        return ""

    def log_tail(self, n=3):
        return ""

    def stop(self, timeout_s=60.0):
        pass


class StubDriver:
    def __init__(self, log_path, env=None):
        pass

    def ready(self, timeout_s=180.0):
        return True, ""

    def alive(self):
        return True

    def run(self, argv, timeout_s):
        raise NotImplementedError

    def close(self):
        pass
