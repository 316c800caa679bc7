"""Account keys of the spec test vectors (../shared/spec/*.md), as public JWKs."""
import josepy as jose

#: RFC 7638 §3.1 example key; thumbprint NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs.
RFC7638_KEY = jose.JWKRSA.from_json({
    "kty": "RSA", "e": "AQAB",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6t"
         "Soc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG"
         "jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-b"
         "FTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"})

#: acme4j-smime's test key (512-bit RSA, test only);
#: thumbprint 1_nKJnlH9boVxdoO63T8zP7O2w42qZL4d6xj35Hy5aI.
ACME4J_KEY = jose.JWKRSA.from_json({
    "kty": "RSA", "e": "AQAB",
    "n": "27Z2spNnDcdfd-LSXjIAblFX-fCXimg85H7TfEe-1BJ50tfUJKAMLoKGQMnh-pw0xfwsYJKCymPV3RvyApAO7Q"})
