# Mount the install medium (found by its volume id) read-only, for the appliance
# repository; works for a CD, a USB stick, and a DVD anaconda already mounted elsewhere.
VOLID='@VOLID@'
MEDIA=/run/install/voxnode-media
mkdir -p "$MEDIA"
if ! mountpoint -q "$MEDIA"; then
    dev=$(blkid -L "$VOLID" 2>/dev/null | head -n1)
    if [ -z "$dev" ] || ! mount -o ro "$dev" "$MEDIA"; then
        echo "voxnode: the install medium labelled $VOLID was not found" >&2
    fi
fi
