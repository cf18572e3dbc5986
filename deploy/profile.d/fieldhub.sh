# /etc/profile.d/fieldhub.sh: operators' shells see what this host's fieldhub units see, so
# `sudo -i fieldhub status` (or device create, user create, ...) works without further setup
# (sudo -i: a login shell, which reads this file; plain sudo resets the environment).
export FIELDHUB_ENV_FILE=/etc/fieldhub/fieldhub.env
case ":$PATH:" in
    *:/opt/fieldhub/bin:*) ;;
    *) export PATH="$PATH:/opt/fieldhub/bin" ;;
esac
