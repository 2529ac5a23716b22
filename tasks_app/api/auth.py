"""JWT sign-in and refresh, throttled: a password cannot be guessed faster than the login rates allow.

The throttles run before the view, so a throttled request is a 429 whatever its password: a right password
sent while throttled yields no token either.
"""

from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from finops.limits import LoginIPThrottle, LoginUserThrottle, RefreshIPThrottle


class ThrottledTokenObtainPairView(TokenObtainPairView):
    throttle_classes = [LoginIPThrottle, LoginUserThrottle]


class ThrottledTokenRefreshView(TokenRefreshView):
    throttle_classes = [RefreshIPThrottle]
