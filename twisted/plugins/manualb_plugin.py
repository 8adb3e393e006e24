from twisted.application.service import ServiceMaker

manualb = ServiceMaker(
    "manualb",
    "manualb.tap",
    "A load balancer and reverse proxy for HTTP backends.",
    "manualb",
)
